"""benchmarks/gpu_check.sh and its report work before a GPU is lent: on the CPU, tiny configs.

A lent GPU machine gives a session one short call, so the script's plumbing (its budget, the
files it leaves, the report) is checked here, where time costs nothing.
"""
import json
import os
import subprocess

import pytest
import torch

from benchmarks import common, gpu_report

ROOT = common.REPO_ROOT
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(tmp_path, **env):
    """Run the script on the CPU with tiny configs, its files going to ``tmp_path``."""
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_gpu_check_runs_a_part_and_reports_it(tmp_path):
    proc = gpu_check(tmp_path, PARTS="train", STEPS="2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    train = json.loads((tmp_path / "gpu_check_train.json").read_text())
    assert train["train"]["sides"]["gpt1f"]["n"] == 2
    log = (tmp_path / "gpu_check.log").read_text()
    assert log == proc.stdout                       # everything printed is in the log that comes back
    assert f"torch {torch.__version__}" in log and "== train (limit 270 s)" in log
    assert "train: rc 0 in" in log and "== packed" not in log   # PARTS chooses the parts
    assert "  train gpt1f: " in log and "MFU" in log
    report = json.loads(next(tmp_path.glob("*_quick.json")).read_text())
    assert report["benchmarks"]["train"]["included_from"] == "gpu_check_train.json"
    assert len(list(tmp_path.iterdir())) <= 8      # what the device tool brings back


def test_gpu_check_skips_parts_the_budget_cannot_hold(tmp_path):
    proc = gpu_check(tmp_path, PARTS="train optim", BUDGET_S="5", MIN_PART_S="30")
    assert proc.returncode == 1
    assert "train: skipped, " in proc.stdout and "optim: skipped, " in proc.stdout
    assert "no gpu_check_<part>.json" in proc.stdout
    assert not list(tmp_path.glob("gpu_check_*.json"))


def test_gpu_check_stops_when_gpt1f_does_not_import(tmp_path):
    """As on a device image without optree and no wheels carried: one clear line, exit 2."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "optree.py").write_text("raise ImportError('no optree here')\n")
    proc = gpu_check(tmp_path / "out", PYTHONPATH=str(blocker))
    assert proc.returncode == 2
    assert "gpt1f does not import: carry .whl" in proc.stdout


@pytest.fixture
def parts_dir(tmp_path):
    """Part files as gpu_check leaves them, from one quick in-process train run and made-up
    CUDA-only fields (the fine-tune's step time, peak GPU memory)."""
    from benchmarks import bench_optim, bench_train
    train = bench_train.run(quick=True, processes=False, warmup=1, steps=2)
    train["train"]["rocstories_run_s"] = {"gpt1f": 12.5, "transformers": 40.0}
    train["train"]["peak_gpu_memory_bytes"] = {"gpt1f": 2**30, "transformers": 3 * 2**30}
    packed = json.loads(json.dumps(train))
    packed["train"]["sides"]["gpt1f"]["median_s"] = 2 * train["train"]["sides"]["gpt1f"]["median_s"]
    optim = bench_optim.run(True, "cpu", compile=False, steps=2)
    for part, result in (("train", train), ("packed", packed), ("optim", optim)):
        gpu_report.part_file(tmp_path, part).write_text(json.dumps(result) + "\n")
    return tmp_path


def test_gpu_report_summarises_each_part(parts_dir, capsys):
    gpu_report.main([str(parts_dir), "--device", "cpu", "--quick"])
    out = capsys.readouterr().out
    assert "fine-tune, 138 updates of 32 stories, step time: gpt1f 12.5 s, transformers 40.0 s " \
           "(target < 30 s: met)" in out
    assert "train gpt1f: " in out and "peak memory 1.00 GiB" in out and "peak memory 3.00 GiB" in out
    assert "GFLOP/s at the start, " in out and "GFLOP/s at the end" in out
    assert "train: the padding-free gpt1f step runs 0.50x the speed of the train part's" in out
    assert "optimizer update alone vs AdamW: " in out
    report = json.loads(next(parts_dir.glob("*_quick.json")).read_text())
    assert set(report["benchmarks"]) == {"train", "optim"}     # packed is not one of run's benchmarks
    assert (parts_dir / report["files"]["table"]).exists()


def test_gpu_report_names_a_part_stopped_at_its_limit(parts_dir, capsys):
    gpu_report.part_file(parts_dir, "packed").write_text("")    # `timeout` killed it before it printed
    with pytest.raises(SystemExit) as stop:
        gpu_report.main([str(parts_dir), "--device", "cpu", "--quick"])
    assert stop.value.code == 1
    assert "packed: gpu_check_packed.json holds no JSON result" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no gpu_check_<part>.json"):
        gpu_report.main([str(parts_dir / "empty"), "--device", "cpu"])


def test_matmul_peak_measures_the_device_types_size(monkeypatch):
    """A GPU's peak needs a larger product than a CPU's (``common.PEAK_N``); ``bench_train``
    measures at that size too, as it passes no ``n``."""
    assert common.PEAK_N["cuda"] == 8192
    monkeypatch.setitem(common.PEAK_N, "cpu", 64)
    assert common.matmul_peak("cpu", torch.float32, reps=2)["n"] == 64
    assert common.matmul_peak("cpu", torch.float32, n=32, reps=2)["n"] == 32
