"""train_rocstories.py under torchrun: two ranks log, checkpoint and predict what one process does.

One module fixture starts every run at once (the machine has 2 cores; the runs are tiny): one
process in this interpreter (accumulation 2), a two-"node" job of two torchrun invocations on
127.0.0.1 (c10d rendezvous, one rank each, accumulation 1 a rank), a single-node two-rank job
under ``--max-restarts 1`` whose rank 1 is SIGKILLed after the first checkpoint, and two nodes
started with different flags. With one thread a rank, the all-reduce of two ranks adds the same
two gradients in the same order as accumulation, so the comparisons are exact.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import optree
import pytest
import torch

from gpt1f import checkpoint
from tests.conftest import ROOT
from tests.test_train_rocstories import TINY, dirs, read_log, tiny_state, without_time

sys.path.insert(0, str(ROOT))
import train_rocstories as cli
from gpt1f.finetune import cli as finetune_cli

# python -m gpt1f.finetune on generated entailment pairs: 3 classes, the classify head, 1 epoch
ENTAILMENT = ["--task", "entailment", "--dataset", "synthetic", "--n_synthetic", "120", "--n_iter", "1",
              *TINY[:TINY.index("--n_iter")], "--lm_coef", "0", "--lr", "1e-2", "--threads", "1",
              "--submit", "--save_every", "3"]

# TINY with dropout on the embeddings too, a checkpoint every 2 updates, 2 epochs of 5 updates
RUN = [*TINY, "--embd_pdrop", "0.1", "--save_every", "2", "--dataset", "synthetic", "--submit",
       "--analysis"]
N_UPDATES = 2 * (80 // 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, argv, env=None, target=(str(ROOT / "train_rocstories.py"),)):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args, *target, *argv], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def two_nodes(argv_of_node):
    """Two torchrun invocations acting as two machines (one rank each) meeting at 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    return [torchrun(["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                      "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "t"],
                     argv_of_node(rank)) for rank in (0, 1)]


def workers(agent_pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the worker processes a torchrun agent started (read from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (OSError, ValueError):
            continue
        if ppid == agent_pid and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry)
    return found


def kill_rank_after_first_checkpoint(agent: subprocess.Popen, latest, rank: int, report: dict) -> None:
    deadline = time.time() + 300
    while not checkpoint.steps(latest) and time.time() < deadline and agent.poll() is None:
        time.sleep(0.02)
    pid = workers(agent.pid).get(rank)
    report["killed_after_step"] = checkpoint.latest_step(latest)
    if pid is not None and agent.poll() is None:
        os.kill(pid, signal.SIGKILL)
        report["killed_pid"] = pid


def finished(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    base = [*RUN, *dirs(tmp)]
    nodes = two_nodes(lambda rank: [*base, "--desc", "nodes"])
    restarted = torchrun(["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"],
                         [*base, "--desc", "killed"])
    mismatch = two_nodes(lambda rank: [*base, "--desc", "mismatch", "--lr", f"{1e-3 * (rank + 1)}"])
    entailment = [*ENTAILMENT, *dirs(tmp, data="ent")]
    finetune = torchrun(["--standalone", "--nproc_per_node", "2"], [*entailment, "--desc", "ent_ranks"],
                        target=("-m", "gpt1f.finetune"))
    kill = {}
    killer = threading.Thread(target=kill_rank_after_first_checkpoint,
                              args=(restarted, tmp / "save" / "killed" / "latest", 1, kill))
    killer.start()
    try:
        single = cli.main([*base, "--desc", "single"])
        finetune_single = finetune_cli.main([*entailment, "--desc", "ent_single"])
    finally:
        killer.join()
    return {"tmp": tmp, "single": single, "nodes": [finished(p) for p in nodes],
            "finetune_single": finetune_single, "finetune": finished(finetune),
            "restarted": finished(restarted), "kill": kill, "mismatch": [finished(p) for p in mismatch]}


def final_state(tmp, desc):
    latest = tmp / "save" / desc / "latest"
    return checkpoint.restore(latest, tiny_state(latest))


def test_two_nodes_meet_at_one_endpoint_and_finish(runs):
    for code, out, err in runs["nodes"]:
        assert code == 0, err[-3000:]
    assert "ROCStories Test Accuracy" in runs["nodes"][0][1]           # rank 0 reports
    assert "ROCStories Test Accuracy" not in runs["nodes"][1][1]       # the other rank does not
    _, meta = final_state(runs["tmp"], "nodes")
    assert meta["progress"]["n_updates"] == N_UPDATES


def test_two_ranks_log_accuracy_and_predictions_equal_one_process(runs):
    assert runs["single"] == 0
    tmp = runs["tmp"]
    _, single = read_log(tmp / "log" / "single.jsonl")
    _, nodes = read_log(tmp / "log" / "nodes.jsonl")
    assert without_time(nodes) == without_time(single) and len(single) == 2
    predictions = [(tmp / "sub" / d / "ROCStories.tsv").read_bytes() for d in ("single", "nodes")]
    assert predictions[0] == predictions[1] and predictions[0].count(b"\n") == 1 + 120
    accuracy = [line for line in runs["nodes"][0][1].splitlines() if "Accuracy" in line]
    assert len(accuracy) == 2


def test_python_m_gpt1f_finetune_under_torchrun_equals_one_process(runs):
    code, out, err = runs["finetune"]
    assert code == 0 and runs["finetune_single"] == 0, err[-3000:]
    tmp = runs["tmp"]
    _, single = read_log(tmp / "log" / "ent_single.jsonl")
    _, ranks = read_log(tmp / "log" / "ent_ranks.jsonl")
    assert without_time(ranks) == without_time(single) and single
    files = [(tmp / "sub" / d / "entailment.tsv").read_bytes() for d in ("ent_single", "ent_ranks")]
    assert files[0] == files[1] and files[0].count(b"\n") > 10


def test_two_ranks_train_the_parameters_of_one_process_bit_for_bit(runs):
    a, _ = final_state(runs["tmp"], "single")
    b, _ = final_state(runs["tmp"], "nodes")
    for x, y in zip(optree.tree_leaves(a), optree.tree_leaves(b)):
        assert torch.equal(x, y)


def test_a_killed_rank_restarts_from_the_checkpoint_and_ends_as_if_uninterrupted(runs):
    code, out, err = runs["restarted"]
    assert code == 0, err[-3000:]
    assert "killed_pid" in runs["kill"], f"the job ended before a rank could be killed: {runs['kill']}"
    assert 0 < runs["kill"]["killed_after_step"] < N_UPDATES
    assert "resumed killed at update" in out
    a, meta_a = final_state(runs["tmp"], "nodes")
    b, meta_b = final_state(runs["tmp"], "killed")
    assert meta_a["progress"]["n_updates"] == meta_b["progress"]["n_updates"] == N_UPDATES
    leaves_a, leaves_b = optree.tree_leaves(a), optree.tree_leaves(b)     # params and Adam state
    assert len(leaves_a) == len(leaves_b) > 3 * len(a["params"])
    for x, y in zip(leaves_a, leaves_b):
        assert torch.equal(x, y)
    _, log_a = read_log(runs["tmp"] / "log" / "nodes.jsonl")
    _, log_b = read_log(runs["tmp"] / "log" / "killed.jsonl")
    assert without_time(log_a) == without_time(log_b)


def test_nodes_started_with_other_flags_are_refused_before_training(runs):
    for code, out, err in runs["mismatch"]:      # each worker exits 2; torchrun then 1
        assert code == 1 and "(exitcode: 2)" in err, err[-3000:]
        assert "the ranks disagree on flags" in err and "rank 1" in err
        assert "settings (" in err and "config (" not in err and "data (" not in err
    assert not checkpoint.steps(runs["tmp"] / "save" / "mismatch" / "latest")


# ---------------------------------------------------------------- refused at once, in this process

@pytest.fixture
def rank0_of_two(monkeypatch):
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)


def test_a_world_size_that_does_not_divide_accum_is_refused_before_any_work(tmp_path, rank0_of_two, capsys):
    code = cli.main([*RUN, *dirs(tmp_path), "--accum", "3", "--n_batch", "4"])
    assert code == 2
    assert "2 ranks cannot share an update's 3 micro-batches (--accum 3)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "save").exists()


def test_research_modes_under_torchrun_are_refused(tmp_path, rank0_of_two, capsys):
    assert cli.main([*RUN, *dirs(tmp_path), "--vmap_seeds", "--seeds", "2"]) == 2
    assert "--vmap_seeds run in one process" in capsys.readouterr().err


def test_a_missing_rendezvous_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    assert cli.main([*RUN, *dirs(tmp_path)]) == 2
    assert "no rendezvous: $MASTER_ADDR, $MASTER_PORT unset for rank 1 of 2" in capsys.readouterr().err
