"""train_rocstories.py end to end on synthetic data: outputs, resume, bad input, weights over HTTP."""
import csv
import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import optree
import pytest
import torch

import gpt1f
from gpt1f import checkpoint, optim, rocstories
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
import train_rocstories as cli

# A model small enough that a CLI run takes seconds on two cores: 1 block, 32 wide.
TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "4", "--n_transfer", "-1",
        "--n_batch", "8", "--accum", "2", "--n_iter", "2", "--lm_coef", "0", "--lr", "1e-3",
        "--n_synthetic", "120", "--n_valid", "40", "--embd_pdrop", "0", "--threads", "1"]


@pytest.fixture
def vocab_args():
    """No vocabulary flags: the CLI's default is the release vocabulary shipped in the package."""
    return []


def dirs(tmp_path, data="data"):
    return ["--data_dir", str(tmp_path / data), "--log_dir", str(tmp_path / "log"),
            "--save_dir", str(tmp_path / "save"), "--submission_dir", str(tmp_path / "sub")]


def read_log(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[0], lines[1:]


def without_time(entries):
    return [{k: v for k, v in e.items() if k != "time"} for e in entries]


def run_in_process(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- end to end

def test_cli_end_to_end_outputs(tmp_path, vocab_args, capsys):
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--desc", "e2e",
            "--submit", "--analysis", "--plot", "--save_every", "3"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err

    header, entries = read_log(tmp_path / "log" / "e2e.jsonl")
    assert header["lr"] == 1e-3 and header["n_layer"] == 1 and header["seed"] == 42
    n_train, batch = 120 - 40, 16
    per_epoch = n_train // batch
    assert [(e["n_epochs"], e["n_updates"]) for e in entries] == [(1, per_epoch), (2, 2 * per_epoch)]
    for e in entries:
        assert set(e) == {"n_epochs", "n_updates", "tr_cost", "va_cost", "tr_acc", "va_acc", "time"}
        assert 0 <= e["va_acc"] <= 100 and e["va_cost"] > 0

    rows = (tmp_path / "sub" / "e2e" / "ROCStories.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 120
    predictions = np.array([int(r.split("\t")[1]) for r in rows[1:]])
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(120)]
    assert set(predictions) <= {0, 1}

    # The best checkpoint holds the params of the best evaluation: re-scoring valid gives its accuracy.
    splits = rocstories.load_rocstories(tmp_path / "data", n_valid=40)
    encoder = cli.text_encoder(cli.parse_args(vocab_args))
    data = cli.prepare_data(cli.parse_args([*vocab_args, "--n_valid", "40", "--data_dir",
                                            str(tmp_path / "data")]), encoder)
    cfg = cli.model_config(cli.parse_args(TINY), n_vocab=data.n_vocab, n_ctx=data.n_ctx)
    best, meta = checkpoint.restore(tmp_path / "save" / "e2e" / "best",
                                    {"params": gpt1f.init_params(cfg, seed=0)})
    valid = data.splits["valid"]
    logits = gpt1f.multiple_choice_logits(best["params"], torch.as_tensor(valid["tokens"]), cfg=cfg)
    best_va = max(e["va_acc"] for e in entries)
    assert rocstories.accuracy(logits.detach().numpy(), valid["label"]) == pytest.approx(best_va)
    assert meta["va_acc"] == pytest.approx(best_va)

    test_acc = np.mean(predictions == splits["test"].label) * 100
    assert f"ROCStories Valid Accuracy: {best_va:.2f}" in out
    assert f"ROCStories Test Accuracy:  {test_acc:.2f}" in out
    assert "best valid accuracy" in out                                   # the summary table
    assert (tmp_path / "log" / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = checkpoint.steps(tmp_path / "save" / "e2e" / "latest")
    assert latest[-1] == 2 * per_epoch and len(latest) == 2


def test_seeds_prints_each_seed_and_the_median(tmp_path, vocab_args, capsys):
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_iter", "1",
            "--seeds", "2", "--seed", "5"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    table = out[out.index("  seed"):].splitlines()
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in table[1:]}
    assert set(rows) == {"5", "6", "median"}
    for i in range(2):
        assert rows["median"][i] == pytest.approx((rows["5"][i] + rows["6"][i]) / 2, abs=0.006)
    for seed in (5, 6):
        _, entries = read_log(tmp_path / "log" / f"synthetic_seed{seed}.jsonl")
        assert max(e["va_acc"] for e in entries) == pytest.approx(rows[str(seed)][0], abs=0.006)
    assert read_log(tmp_path / "log" / "synthetic_seed5.jsonl")[1] != \
        read_log(tmp_path / "log" / "synthetic_seed6.jsonl")[1]


def test_learns_the_synthetic_rule_from_scratch(tmp_path, vocab_args, capsys):
    """The quickstart's claim: a small model trained from scratch solves the synthetic task."""
    argv = [*vocab_args, *dirs(tmp_path), "--dataset", "synthetic", *QUICK]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    _, entries = read_log(tmp_path / "log" / "synthetic.jsonl")
    assert max(e["va_acc"] for e in entries) >= 90.0


QUICK = ["--n_layer", "2", "--n_embd", "64", "--n_head", "4", "--n_transfer", "-1",
         "--lm_coef", "0", "--embd_pdrop", "0", "--lr", "1e-3", "--n_batch", "8", "--accum", "1",
         "--n_iter", "2", "--n_synthetic", "600", "--n_valid", "150", "--threads", "1"]


# ---------------------------------------------------------------- resume after SIGKILL

def tiny_state(latest):
    """A template of TINY's training state (params and optimizer state) for checkpoint.restore."""
    n_ctx = checkpoint.read_meta(latest)["fingerprint"]["config"]["n_ctx"]
    params = gpt1f.init_params(gpt1f.Config(n_vocab=40478, n_ctx=n_ctx, n_embd=32, n_head=4,
                                            n_layer=1), seed=0)
    return {"params": params, "opt_state": optim.openai_adam(t_total=1).init(params)}


def cli_process(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train_rocstories.py"), *argv], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_first_checkpoint(proc, latest, *, timeout: float) -> None:
    """SIGKILL ``proc`` as soon as ``latest`` holds a checkpoint (it must still be running)."""
    deadline = time.time() + timeout
    while not checkpoint.steps(latest) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_limit_heap_changes_memory_not_results(tmp_path, vocab_args):
    """``--limit_heap`` is an allocator setting of the process: the run logs the same numbers."""
    base = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_iter", "1"]
    runs = [cli_process([*base, "--desc", desc, *extra])
            for desc, extra in (("plain", []), ("limited", ["--limit_heap"]))]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "--limit_heap needs glibc" not in err
    logs = [without_time(read_log(tmp_path / "log" / f"{d}.jsonl")[1]) for d in ("plain", "limited")]
    assert logs[0] == logs[1] and logs[0]


def test_resume_after_sigkill_is_bit_identical(tmp_path, vocab_args):
    base = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_iter", "3",
            "--save_every", "2", "--embd_pdrop", "0.1"]
    whole = cli_process([*base, "--desc", "whole"])
    killed = cli_process([*base, "--desc", "killed"])
    latest = tmp_path / "save" / "killed" / "latest"
    kill_after_first_checkpoint(killed, latest, timeout=120)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    total = 3 * (80 // 16)
    interrupted_at = checkpoint.latest_step(latest)
    assert 0 < interrupted_at < total

    resumed = cli_process([*base, "--desc", "killed", "--resume"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed killed at update {interrupted_at}" in out + err

    a, meta_a = checkpoint.restore(tmp_path / "save" / "whole" / "latest", tiny_state(latest))
    b, meta_b = checkpoint.restore(latest, tiny_state(latest))
    assert meta_a["progress"]["n_updates"] == meta_b["progress"]["n_updates"] == total
    leaves_a, leaves_b = optree.tree_leaves(a), optree.tree_leaves(b)   # params and Adam state
    assert len(leaves_a) == len(leaves_b) > 3 * len(a["params"])
    for x, y in zip(leaves_a, leaves_b):
        assert torch.equal(x, y)
    assert without_time(meta_a["progress"]["history"]) == without_time(meta_b["progress"]["history"])
    _, log_a = read_log(tmp_path / "log" / "whole.jsonl")
    _, log_b = read_log(tmp_path / "log" / "killed.jsonl")
    assert without_time(log_a) == without_time(log_b)
    assert (tmp_path / "save" / "killed" / "best").is_dir()


# ---------------------------------------------------------------- bad input: exit 2, nothing written

def assert_nothing_written(tmp_path):
    for name in ("log", "save", "sub"):
        assert not (tmp_path / name).exists(), name


def synthetic_rows(n=60):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sentences, right, wrong = rocstories.synthetic_story(rng)
        rows.append([f"s{i}", *sentences, right, wrong, "1"])
    return rows


def write_data(folder, rows, header=rocstories.COLUMNS):
    folder.mkdir(parents=True, exist_ok=True)
    for name in (rocstories.VALID_FILE, rocstories.TEST_FILE):
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def test_missing_data_files(tmp_path, vocab_args, capsys):
    (tmp_path / "data").mkdir()
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path)])
    assert code == 2
    assert rocstories.VALID_FILE in err and rocstories.TEST_FILE in err
    assert str(tmp_path / "data") in err and "request form" in err
    assert_nothing_written(tmp_path)


def bad_rows(kind):
    rows = synthetic_rows()
    if kind == "label-text":
        rows[4][-1] = "two"
    elif kind == "label-range":
        rows[4][-1] = "3"
    elif kind == "empty":
        rows[4][2] = ""
    return rows


@pytest.mark.parametrize("kind, message", [
    ("label-text", r"row 5 \(InputStoryid 's4'\) has AnswerRightEnding='two', not an integer"),
    ("label-range", r"row 5 \(InputStoryid 's4'\) has AnswerRightEnding=3, out of range"),
    ("empty", r"row 5 \(InputStoryid 's4'\) has an empty InputSentence2"),
])
def test_bad_csv_cells(tmp_path, vocab_args, capsys, kind, message):
    write_data(tmp_path / "data", bad_rows(kind))
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path)])
    assert code == 2
    assert rocstories.VALID_FILE in err
    assert re.search(message, err), err
    assert_nothing_written(tmp_path)


def test_csv_missing_columns(tmp_path, vocab_args, capsys):
    header = [c for c in rocstories.COLUMNS if c != "RandomFifthSentenceQuiz2"]
    write_data(tmp_path / "data", [r[:6] + r[7:] for r in synthetic_rows()], header=header)
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path)])
    assert code == 2 and "missing column(s) RandomFifthSentenceQuiz2" in err
    assert_nothing_written(tmp_path)


def test_n_ctx_over_512(tmp_path, vocab_args, capsys):
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path), "--dataset",
                                           "synthetic", "--n_ctx", "513"])
    assert code == 2 and "--n_ctx=513 exceeds 512" in err
    assert_nothing_written(tmp_path)
    assert not (tmp_path / "data").exists()


def test_resume_without_checkpoint(tmp_path, vocab_args, capsys):
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path), "--dataset",
                                           "synthetic", "--resume"])
    assert code == 2 and "no checkpoint in" in err and "nothing to resume" in err
    assert_nothing_written(tmp_path)


def test_resume_with_other_settings_and_restart_over_checkpoints(tmp_path, vocab_args, capsys):
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_iter", "1"]
    assert run_in_process(capsys, argv)[0] == 0
    log = (tmp_path / "log" / "synthetic.jsonl").read_text()
    steps = checkpoint.steps(tmp_path / "save" / "synthetic" / "latest")

    code, _, err = run_in_process(capsys, [*argv, "--resume", "--lr", "2e-3", "--n_embd", "64"])
    assert code == 2 and "other settings" in err
    assert "lr: 0.001 in the checkpoint, 0.002 now" in err and "'n_embd': 32" in err
    code, _, err = run_in_process(capsys, argv)                           # no --resume
    assert code == 2 and "holds checkpoints of an earlier run" in err and "--overwrite" in err
    assert (tmp_path / "log" / "synthetic.jsonl").read_text() == log
    assert checkpoint.steps(tmp_path / "save" / "synthetic" / "latest") == steps


def test_weights_missing_offline(tmp_path, vocab_args, capsys):
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_transfer", "0",
            "--n_embd", "768", "--n_head", "12", "--offline", "--weights_dir", str(tmp_path / "w")]
    code, _, err = run_in_process(capsys, argv)
    assert code == 2 and "cannot load the pre-trained weights" in err
    assert "params_0.npy" in err and str(tmp_path / "w") in err
    assert_nothing_written(tmp_path)


def test_synthetic_never_overwrites_real_data(tmp_path, vocab_args, capsys):
    write_data(tmp_path / "data", synthetic_rows())
    before = (tmp_path / "data" / rocstories.VALID_FILE).read_bytes()
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path), "--dataset",
                                           "synthetic"])
    assert code == 2 and "is not synthetic data" in err
    assert (tmp_path / "data" / rocstories.VALID_FILE).read_bytes() == before
    assert_nothing_written(tmp_path)


def test_analysis_needs_test_labels(tmp_path, vocab_args, capsys):
    write_data(tmp_path / "data", synthetic_rows())
    with open(tmp_path / "data" / rocstories.TEST_FILE, "w", newline="") as f:
        csv.writer(f).writerows([rocstories.COLUMNS[:-1]] + [r[:-1] for r in synthetic_rows()])
    code, _, err = run_in_process(capsys, [*TINY, *vocab_args, *dirs(tmp_path), "--analysis"])
    assert code == 2 and "--analysis needs the test file's AnswerRightEnding" in err
    assert_nothing_written(tmp_path)


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    cli.plot_history([{"n_updates": 1, "tr_cost": 1.0, "va_cost": 1.0, "tr_acc": 50.0,
                       "va_acc": 50.0}], tmp_path / "p.png")
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------- non-finite loss

def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, vocab_args, capsys):
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--lr", "1e38",
            "--save_every", "1", "--lr_schedule", "warmup_constant", "--lr_warmup", "0"]
    code, _, err = run_in_process(capsys, argv)
    assert code == 1
    update = int(err.split("at update ")[1].split(" ")[0])
    assert "loss is nan" in err or "loss is inf" in err
    latest = tmp_path / "save" / "synthetic" / "latest"
    assert checkpoint.latest_step(latest) == update - 1
    state, _ = checkpoint.restore(latest, tiny_state(latest))
    assert all(torch.isfinite(p).all() for p in state["params"].values())


# ---------------------------------------------------------------- pre-trained weights over HTTP

@pytest.fixture
def release_server(tmp_path):
    """A synthetic GPT-1 release (1 block, 32 wide, real vocabulary size) served on 127.0.0.1."""
    folder = tmp_path / "served"
    cfg = gpt1f.Config(n_vocab=40478, n_special=0, n_ctx=64, n_embd=32, n_head=4, n_layer=1)
    params = gpt1f.init_params(cfg, seed=123)
    gpt1f.save_openai(params, folder, cfg=cfg)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder, params
    server.shutdown()


def test_pretrained_weights_downloaded_and_transferred(tmp_path, vocab_args, capsys, release_server):
    url, served, release = release_server
    sums = {name: gpt1f.download.git_blob_sha1(served / name) for name in gpt1f.download.WEIGHT_NAMES}
    (tmp_path / "sums.json").write_text(json.dumps(sums))
    argv = [*TINY, *vocab_args, *dirs(tmp_path), "--dataset", "synthetic", "--n_transfer", "1",
            "--n_iter", "1", "--lr", "0", "--weights_dir", str(tmp_path / "w"),
            "--weights_url", url, "--weights_checksums", str(tmp_path / "sums.json")]
    code, _, err = run_in_process(capsys, argv)
    assert code == 0, err
    for name in gpt1f.download.WEIGHT_NAMES:
        assert (tmp_path / "w" / name).read_bytes() == (served / name).read_bytes()
    latest = tmp_path / "save" / "synthetic" / "latest"
    n_ctx = checkpoint.read_meta(latest)["fingerprint"]["config"]["n_ctx"]
    cfg = gpt1f.Config(n_vocab=40478, n_ctx=n_ctx, n_embd=32, n_head=4, n_layer=1)
    trained, _ = checkpoint.restore(latest, {"params": gpt1f.init_params(cfg, seed=0)})
    we = trained["params"]["model/we:0"]   # lr 0: the params are the loaded ones
    assert torch.equal(we[:40478], release["model/we:0"][:40478])
    assert torch.equal(we[cfg.pos_offset:], release["model/we:0"][40478:40478 + n_ctx])
    for name, value in release.items():
        if name.startswith("model/h0/"):
            assert torch.equal(trained["params"][name], value), name


def test_vocabulary_default_is_packaged_and_a_weights_dir_holding_one_overrides(tmp_path):
    from tests.test_text import write_vocabulary

    assert cli.text_encoder(cli.parse_args([])).n_vocab == 40478
    assert cli.text_encoder(cli.parse_args(["--weights_dir", str(tmp_path)])).n_vocab == 40478
    write_vocabulary(tmp_path)
    tiny = cli.text_encoder(cli.parse_args(["--weights_dir", str(tmp_path)]))
    assert tiny.n_vocab < 1000


# ---------------------------------------------------------------- pinned results

PINNED = json.loads((ROOT / "tests" / "golden" / "rocstories_pinned_run.json").read_text())


def test_results_are_pinned_across_the_loop_moving_into_the_library(tmp_path, capsys):
    """The log and submission of a short run with dropout and the LM loss on, recorded with the
    script as it was before its loop became ``gpt1f.finetune.loop`` (costs equal to all digits
    there; the tolerances leave room only for another CPU's summation order)."""
    code, _, err = run_in_process(capsys, [*PINNED["argv"], *dirs(tmp_path)])
    assert code == 0, err
    _, entries = read_log(tmp_path / "log" / "synthetic.jsonl")
    entries = without_time(entries)
    assert [{k: e[k] for k in ("n_epochs", "n_updates")} for e in entries] == \
        [{k: e[k] for k in ("n_epochs", "n_updates")} for e in PINNED["log"]]
    for got, pinned in zip(entries, PINNED["log"]):
        assert got.keys() == pinned.keys()
        for k in ("tr_cost", "va_cost"):
            assert got[k] == pytest.approx(pinned[k], rel=1e-4), (k, got, pinned)
        for k in ("tr_acc", "va_acc"):                       # 16 examples: one is 6.25 points
            assert abs(got[k] - pinned[k]) <= 100 / 16 + 1e-9, (k, got, pinned)
    rows = (tmp_path / "sub" / "synthetic" / "ROCStories.tsv").read_text().splitlines()
    pinned_rows = PINNED["submission"].splitlines()
    assert rows[0] == pinned_rows[0] and len(rows) == len(pinned_rows)
    assert sum(a != b for a, b in zip(rows, pinned_rows)) <= 2
