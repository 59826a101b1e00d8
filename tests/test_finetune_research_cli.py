"""The research modes on the command line (issue 16): --vmap_seeds, DP-SGD, LoRA."""
import math

import numpy as np
import pytest
import torch

import gpt1f
from gpt1f import checkpoint, dp, lora
from tests.test_train_rocstories import dirs, read_log, run_in_process, without_time

BASE = ["--dataset", "synthetic", "--n_layer", "1", "--n_embd", "32", "--n_head", "4",
        "--n_transfer", "-1", "--n_batch", "4", "--accum", "2", "--n_iter", "1", "--lm_coef", "0.5",
        "--lr", "1e-3", "--n_synthetic", "64", "--n_valid", "16", "--threads", "1"]


def latest(tmp_path, desc):
    """The latest checkpoint's state as numpy arrays (whatever it holds) and its meta."""
    folder = tmp_path / "save" / desc / "latest"
    meta = checkpoint.read_meta(folder)
    cfg = gpt1f.Config(**meta["fingerprint"]["config"])
    return folder, meta, cfg


def test_vmapped_seeds_equal_the_seeds_run_one_after_the_other(tmp_path, capsys):
    code, out_vmap, err = run_in_process(capsys, [*BASE, *dirs(tmp_path), "--seeds", "2",
                                                  "--vmap_seeds", "--desc", "v", "--submit"])
    assert code == 0, err
    code, out_seq, err = run_in_process(capsys, [*BASE, *dirs(tmp_path), "--seeds", "2",
                                                 "--desc", "s", "--submit"])
    assert code == 0, err
    assert out_vmap.split("median")[1] == out_seq.split("median")[1]        # the same median
    for seed in (42, 43):
        _, vmapped = read_log(tmp_path / "log" / f"v_seed{seed}.jsonl")
        _, alone = read_log(tmp_path / "log" / f"s_seed{seed}.jsonl")
        for a, b in zip(without_time(vmapped), without_time(alone)):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (seed, k)
        folder, meta, cfg = latest(tmp_path, f"v_seed{seed}")
        template = {"params": gpt1f.init_params(cfg, seed=0)}
        v, _ = checkpoint.restore(folder, template)
        s, _ = checkpoint.restore(tmp_path / "save" / f"s_seed{seed}" / "latest", template)
        assert meta["progress"]["n_updates"] == 6
        # clf/b's gradient is zero by symmetry (a shift of every choice's logit), so its value is
        # rounding noise that Adam scales up to the learning rate: it is left out.
        for name in v["params"]:
            if name != "model/clf/b:0":
                torch.testing.assert_close(v["params"][name], s["params"][name], rtol=1e-5, atol=1e-6)
        sub_v = (tmp_path / "sub" / f"v_seed{seed}" / "ROCStories.tsv").read_text()
        assert sub_v == (tmp_path / "sub" / f"s_seed{seed}" / "ROCStories.tsv").read_text()
    # the two seeds differ (each lane has its own data order and masks)
    _, a = read_log(tmp_path / "log" / "v_seed42.jsonl")
    _, b = read_log(tmp_path / "log" / "v_seed43.jsonl")
    assert a[0]["tr_cost"] != b[0]["tr_cost"]


def test_dp_sgd_logs_the_epsilon_spent_at_every_epoch(tmp_path, capsys):
    argv = [*BASE, *dirs(tmp_path), "--n_iter", "2", "--dp_clip", "1", "--dp_noise", "0.8",
            "--desc", "dp"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    _, entries = read_log(tmp_path / "log" / "dp.jsonl")
    assert [e["n_updates"] for e in entries] == [6, 12]
    for e in entries:                       # 48 training stories, 8 expected per update
        assert e["epsilon"] == pytest.approx(dp.epsilon(noise=0.8, sample_rate=8 / 48,
                                                        steps=e["n_updates"], delta=1e-5))
    assert entries[0]["epsilon"] < entries[1]["epsilon"]
    _, meta, _ = latest(tmp_path, "dp")
    assert meta["fingerprint"]["dp"] == [1.0, 0.8, 1e-5]


def test_dp_epsilon_finds_the_noise_that_spends_it(tmp_path, capsys):
    argv = [*BASE, *dirs(tmp_path), "--dp_clip", "1", "--dp_epsilon", "4", "--dp_delta", "1e-3",
            "--desc", "eps"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    _, entries = read_log(tmp_path / "log" / "eps.jsonl")
    assert 3.6 <= entries[-1]["epsilon"] <= 4.0          # the whole run's budget, spent
    noise = float(out.split("noise ")[1].split(",")[0])
    assert noise == pytest.approx(dp.noise_for_epsilon(target_epsilon=4, delta=1e-3,
                                                       sample_rate=8 / 48, steps=6), rel=1e-3)


def test_lora_trains_adapters_only_and_saves_them(tmp_path, capsys):
    argv = [*BASE, *dirs(tmp_path), "--lora_rank", "2", "--desc", "lora", "--embd_pdrop", "0"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    folder, meta, cfg = latest(tmp_path, "lora")
    assert meta["fingerprint"]["lora"] == [2, "attn/c_attn", "attn/c_proj"]
    base = gpt1f.init_params(cfg, seed=42)
    adapters, config = lora.load(tmp_path / "save" / "lora" / "adapters")
    assert config["rank"] == 2
    assert set(adapters) == set(lora.init(base, rank=2, key=gpt1f.random.key(0)))
    assert lora.count(adapters) < gpt1f.count_params(base) / 10
    state, _ = checkpoint.restore(folder, {"adapters": adapters})
    with pytest.raises(checkpoint.CheckpointMismatch):   # no full parameters in the checkpoint
        checkpoint.restore(folder, {"params": base})
    initial = lora.init(base, rank=2, key=gpt1f.random.key(42))
    moved = [k for k in adapters if not torch.equal(state["adapters"][k], initial[k])]
    assert any(k.endswith("b:0") or "lora_b" in k for k in moved), moved
    # the best adapters merged into the untouched base give the logged best valid accuracy
    _, entries = read_log(tmp_path / "log" / "lora.jsonl")
    assert max(e["va_acc"] for e in entries) == pytest.approx(float(out.split("best valid accuracy ")[1][:5]))
    assert math.isfinite(np.mean([e["va_cost"] for e in entries]))


@pytest.mark.parametrize("extra, message", [
    (["--vmap_seeds"], "--vmap_seeds needs --seeds N with N >= 2"),
    (["--dp_noise", "1"], "DP-SGD needs --dp_clip C"),
    (["--dp_clip", "1"], "exactly one of --dp_noise SIGMA and --dp_epsilon E"),
    (["--dp_clip", "1", "--dp_noise", "1", "--dp_epsilon", "2"], "exactly one of"),
    (["--dp_clip", "-1", "--dp_noise", "1"], "--dp_clip=-1.0 must be a positive"),
    (["--dp_clip", "1", "--dp_noise", "1", "--dp_delta", "2"], "--dp_delta=2.0 must lie in (0, 1)"),
    (["--dp_clip", "1", "--dp_noise", "1", "--seeds", "2", "--vmap_seeds"], "DP-SGD runs alone"),
    (["--lora_rank", "0"], "--lora_rank=0 must be at least 1"),
    (["--lora_rank", "2", "--seeds", "2", "--vmap_seeds"], "does not combine with --vmap_seeds"),
    (["--lora_rank", "2", "--lora_targets", ","], "--lora_targets names no weight"),
])
def test_research_flags_are_checked_before_any_work(tmp_path, capsys, extra, message):
    code, _, err = run_in_process(capsys, [*BASE, *dirs(tmp_path), *extra])
    assert code == 2 and message in err, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "log").exists()
