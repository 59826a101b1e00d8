"""train_rocstories.py under bad flags, faults and concurrency (issue 14, items 2, 4, 10-14, 16)."""
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import gpt1f.finetune.loop
from gpt1f import checkpoint
from tests.conftest import ROOT
from tests.test_train_rocstories import TINY, dirs, read_log, run_in_process, without_time


@pytest.fixture
def vocab_args():
    return []          # the packaged release vocabulary


def synthetic(tmp_path, *extra):
    return [*TINY, *dirs(tmp_path), "--dataset", "synthetic", *extra]


# ---------------------------------------------------------------- items 10, 11: every flag first

def checksums_list(tmp_path):
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(["params_0.npy", "0" * 40]))
    return str(path)


BAD_FLAGS = [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "1e39"], "--lr"), (["--b1", "1"], "--b1"), (["--b2", "-0.5"], "--b2"),
    (["--e", "-1"], "--e"), (["--e", "nan"], "--e"), (["--l2", "-0.01"], "--l2"),
    (["--lr_warmup", "-0.1"], "--lr_warmup"), (["--threads", "-1"], "--threads"),
    (["--device", "meta"], "--device"), (["--device", "gpu"], "--device"),
    (["--max_grad_norm", "nan"], "--max_grad_norm"), (["--lm_coef", "-1"], "--lm_coef"),
    (["--lm_coef", "inf"], "--lm_coef"), (["--embd_pdrop", "nan"], "--embd_pdrop"),
    (["--n_head", "5"], "--n_head"), (["--weights_checksums", None], "--weights_checksums"),
]


@pytest.mark.parametrize("flags, name", BAD_FLAGS, ids=[" ".join(map(str, f)) for f, _ in BAD_FLAGS])
def test_a_bad_flag_exits_2_with_one_line_naming_it_before_any_work(tmp_path, capsys, flags, name):
    flags = [checksums_list(tmp_path) if f is None else f for f in flags]
    code, out, err = run_in_process(capsys, synthetic(tmp_path, *flags))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], err
    assert not (tmp_path / "data").exists() and not (tmp_path / "log").exists()


# ---------------------------------------------------------------- item 12: writable outputs

@pytest.mark.parametrize("flag", ["--save_dir", "--log_dir", "--submission_dir"])
def test_an_output_folder_that_cannot_be_written_is_refused_at_start(tmp_path, capsys, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = synthetic(tmp_path, "--submit", flag, str(blocker / "out"))
    start = time.time()
    code, out, err = run_in_process(capsys, argv)
    assert code == 2, err
    assert flag in err and str(blocker) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "data").exists(), "work started before the folders were checked"
    assert time.time() - start < 30


def test_a_full_disk_during_a_checkpoint_save_ends_with_a_message(tmp_path, vocab_args, capsys,
                                                                 monkeypatch):
    import orbax.checkpoint as ocp
    real_save, calls = ocp.CheckpointManager.save, []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
        return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    argv = [*synthetic(tmp_path, "--desc", "full", "--save_every", "2"), *vocab_args]
    code, out, err = run_in_process(capsys, argv)
    assert code == 1, err
    assert "No space left on device" in err and "Traceback" not in err
    latest = tmp_path / "save" / "full" / "latest"
    assert checkpoint.steps(latest) == [2] and str(latest) in err
    checkpoint.read_meta(latest)


# ---------------------------------------------------------------- item 2: earlier outputs kept

def test_outputs_of_an_earlier_run_are_never_overwritten(tmp_path, vocab_args, capsys):
    base = [*synthetic(tmp_path, "--n_iter", "1", "--submit"), *vocab_args]
    for desc in ("a", "b"):
        code, out, err = run_in_process(capsys, [*base, "--desc", desc])
        assert code == 0, err
    subs = {desc: tmp_path / "sub" / desc / "ROCStories.tsv" for desc in ("a", "b")}
    assert all(p.is_file() for p in subs.values())
    log_a = (tmp_path / "log" / "a.jsonl").read_text()
    code, out, err = run_in_process(capsys, [*base, "--desc", "a", "--save_dir",
                                             str(tmp_path / "other_save")])
    assert code == 2 and "a.jsonl" in err and "--overwrite" in err, err
    assert (tmp_path / "log" / "a.jsonl").read_text() == log_a
    code, out, err = run_in_process(capsys, [*base, "--desc", "c", "--submission_name", "mine.tsv"])
    assert code == 0 and (tmp_path / "sub" / "c" / "mine.tsv").is_file(), err


# ---------------------------------------------------------------- item 4: a non-finite state

def test_non_finite_params_are_never_evaluated_saved_or_submitted(tmp_path, vocab_args, capsys,
                                                                 monkeypatch):
    real = gpt1f.finetune.loop.make_train_step
    n_updates = [0]

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(params, opt_state, batch, key):
            params, opt_state, metrics = step(params, opt_state, batch, key)
            n_updates[0] += 1
            if n_updates[0] == 5:     # the first epoch's last update: a fault writes a NaN
                params = {**params, "model/clf/b:0": params["model/clf/b:0"] * math.nan}
            return params, opt_state, metrics
        return run
    monkeypatch.setattr(gpt1f.finetune.loop, "make_train_step", poisoned)
    argv = [*synthetic(tmp_path, "--desc", "nan", "--save_every", "2", "--submit"), *vocab_args]
    code, out, err = run_in_process(capsys, argv)
    assert code == 1, err
    assert "update 5" in err and "Traceback" not in err, err
    latest = tmp_path / "save" / "nan" / "latest"
    assert str(latest / "4") in err                      # the last checkpoint with finite params
    assert not (tmp_path / "sub" / "nan" / "ROCStories.tsv").exists()
    cfg = gpt1f.Config(**checkpoint.read_meta(latest)["fingerprint"]["config"])
    template = {"params": gpt1f.init_params(cfg, seed=0)}
    for folder in (latest, tmp_path / "save" / "nan" / "best"):
        for step in checkpoint.steps(folder):
            state, _ = checkpoint.restore(folder, template, step)
            assert all(torch.isfinite(p).all() for p in state["params"].values()), (folder, step)


# ---------------------------------------------------------------- item 13: a damaged latest

def test_resume_falls_back_past_a_damaged_latest_checkpoint(tmp_path, vocab_args, capsys):
    import shutil
    argv = [*synthetic(tmp_path, "--desc", "dmg", "--n_iter", "1", "--save_every", "2"), *vocab_args]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    _, whole = read_log(tmp_path / "log" / "dmg.jsonl")
    latest = tmp_path / "save" / "dmg" / "latest"
    assert checkpoint.steps(latest) == [4, 5]
    shutil.rmtree(latest / "5" / "state")
    code, out, err = run_in_process(capsys, [*argv, "--resume"])
    assert code == 0, err
    assert str(latest / "5") in err and "step 4" in err, err
    _, resumed = read_log(tmp_path / "log" / "dmg.jsonl")
    assert without_time(resumed) == without_time(whole)


# ---------------------------------------------------------------- item 14: one run per folder

def test_a_second_run_on_the_same_folder_is_refused(tmp_path, vocab_args, capsys):
    folder = tmp_path / "save" / "twice"
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as held:         # what a running run holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = run_in_process(capsys, [*synthetic(tmp_path, "--desc", "twice"), *vocab_args])
    assert code == 2 and "another run" in err and str(folder) in err, err
    assert not (tmp_path / "log" / "twice.jsonl").exists()


def test_the_run_lock_is_released_when_a_run_ends(tmp_path, vocab_args, capsys):
    argv = [*synthetic(tmp_path, "--desc", "again", "--n_iter", "1"), *vocab_args]
    assert run_in_process(capsys, argv)[0] == 0
    code, out, err = run_in_process(capsys, [*argv, "--overwrite"])
    assert code == 0, err


# ---------------------------------------------------------------- item 16: SIGINT

def interruptible() -> None:
    """In the child before exec: SIGINT unblocked and at its default, as a terminal starts a
    program. A blocked signal mask is inherited across exec, and by the time this test runs in the
    full suite some earlier code in the pytest process has SIGINT blocked: the run then never saw
    the signal and finished with exit 0."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_ends_with_one_line_naming_the_last_checkpoint(tmp_path, vocab_args):
    argv = [sys.executable, str(ROOT / "train_rocstories.py"),
            *synthetic(tmp_path, "--desc", "int", "--n_iter", "50", "--save_every", "1"), *vocab_args]
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    latest = tmp_path / "save" / "int" / "latest"
    # The run's own word that epoch 1 is evaluated (its updates saved, --save_every 1), read from
    # its stdout as it comes; both pipes are drained meanwhile so the child never blocks on them.
    evaluated, out_lines, err_lines = threading.Event(), [], []

    def drain(pipe, lines, on_line=None):
        for line in pipe:
            lines.append(line)
            if on_line:
                on_line(line)

    def on_stdout(line):
        if line.startswith("1 "):                    # "n_epochs n_updates tr_cost ..." of epoch 1
            evaluated.set()

    readers = [threading.Thread(target=drain, args=(proc.stdout, out_lines, on_stdout)),
               threading.Thread(target=drain, args=(proc.stderr, err_lines))]
    for reader in readers:
        reader.start()
    assert evaluated.wait(timeout=180), "".join(err_lines)[-3000:]
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    for reader in readers:
        reader.join(timeout=30)
    err = "".join(err_lines)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert str(latest) in last and "--resume" in last, err
