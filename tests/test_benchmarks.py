"""The benchmark suite runs end to end on tiny configs and writes well-formed results.

Speed is not asserted here (see benchmarks/); these tests check that the suite works, that its
FLOP formula and timing helpers say what they claim, and that the peer it compares against is
built with the same weights (same multiple-choice scores).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import gpt1f
from benchmarks import bench_train, common

ROOT = common.REPO_ROOT


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """One ``python -m benchmarks.run --quick`` into a temporary folder: (results dict, folder)."""
    out = tmp_path_factory.mktemp("results")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-compile", "--out-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, f"expected one JSON file, found {files}"
    return json.loads(files[0].read_text()), out, proc.stdout


def test_quick_run_writes_json_table_and_plot(quick_results):
    results, out, stdout = quick_results
    stem = results["files"]["json"][:-len(".json")]
    assert stem.startswith(f"cpu{os.cpu_count()}_cpu_") and stem.endswith("_quick")
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] == 2
    assert "transformers" in env and env["cpu"]
    assert results["peak"]["flops_per_s"] > 0 and len(results["peak"]["times_s"]) == 10
    assert set(results["benchmarks"]) == {"train", "memory", "optim", "load", "text", "generate"}
    for name, r in results["benchmarks"].items():
        assert r["status"] == "ok", f"{name}: {r.get('error')}\n{r.get('traceback', '')}"
    table = (out / results["files"]["table"]).read_text()
    assert "| training step |" in table and "| training step peak RSS, default malloc |" in table
    assert "| ... both with limit_heap_retention() |" in table
    assert "| generate greedy, batch 1 (new tokens/s) |" in table
    assert "| generate top_k, batch 1 vs bandwidth bound |" in table
    assert table.strip() in stdout
    assert (out / results["files"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_include_takes_a_separate_runs_result_into_the_table(quick_results, tmp_path):
    """``--include train=FILE`` merges a result printed by bench_train without running it again."""
    results, _, _ = quick_results
    train = dict(results["benchmarks"]["train"], peak_flops_per_s=123e9)
    (tmp_path / "train.json").write_text(json.dumps(train))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "", "--out-dir", str(tmp_path / "out"),
         "--include", f"train={tmp_path / 'train.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert set(merged["benchmarks"]) == {"train"}
    assert merged["benchmarks"]["train"]["included_from"] == "train.json"
    assert merged["benchmarks"]["train"]["train"] == train["train"]
    assert "123 GFLOP/s" in proc.stdout and "| training step |" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.run", "--include", "speed=x.json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "NAME=FILE" in bad.stderr


@pytest.mark.parametrize("part", ["train", "eval"])
def test_train_and_eval_results_hold_raw_times_medians_and_ratios(quick_results, part):
    r = quick_results[0]["benchmarks"]["train"][part]
    steps = quick_results[0]["benchmarks"]["train"]["steps"]
    assert set(r["sides"]) == {"gpt1f", "transformers"}
    for side in r["sides"].values():
        times = side["times_s"]
        assert len(times) == side["n"] == steps and all(t > 0 for t in times)
        assert side["min_s"] <= side["median_s"] <= side["max_s"]
        assert side["median_s"] == sorted(times)[len(times) // 2]
        assert side["mfu"] == pytest.approx(r["flop_per_step"] / side["median_s"]
                                            / quick_results[0]["peak"]["flops_per_s"])
    ratios = r["speedup"]["ratios"]
    pairs = zip(r["sides"]["transformers"]["times_s"], r["sides"]["gpt1f"]["times_s"])
    assert sorted(ratios) == pytest.approx(sorted(b / o for b, o in pairs))
    assert quick_results[0]["benchmarks"]["train"]["isolation"] == "a process per side"
    assert set(r["first_call_s"]) == {"gpt1f", "transformers"}


def test_peer_holds_the_same_weights(quick_results):
    """Eval-mode multiple-choice scores of gpt1f and transformers agree: one model, two codes."""
    assert quick_results[0]["benchmarks"]["train"]["eval_max_abs_diff"] < 1e-4


def test_memory_is_measured_per_side_in_fresh_processes(quick_results):
    mem = quick_results[0]["benchmarks"]["memory"]
    ours, peer = mem["sides"]["gpt1f"], mem["sides"]["transformers"]
    for side in (ours, peer):
        assert side["process_peak_rss_bytes"] >= side["rss_at_start_bytes"] > 0
    assert mem["ratio"] == pytest.approx(ours[mem["ratio_key"]] / peer[mem["ratio_key"]])
    limited = mem["limited"]
    assert [r["limit_heap"] for r in limited.values()] == [True, True]
    assert [r["limit_heap"] for r in mem["sides"].values()] == [False, False]
    key = mem["ratio_key"]
    assert mem["ratio_limited"] == pytest.approx(limited["gpt1f"][key] / peer[key])
    assert mem["ratio_both_limited"] == pytest.approx(limited["gpt1f"][key] / limited["transformers"][key])


def test_every_committed_runner_result_renders_its_table():
    """The table reads the results' schema directly: every committed runner file still renders
    (so the reader needs no fallbacks for older layouts)."""
    from benchmarks import run

    files = [f for f in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
             if "files" in json.loads(f.read_text())]
    assert files
    for f in files:
        results = json.loads(f.read_text())
        assert "| weight loading" in run.markdown_table(results), f.name


def test_no_result_is_kept_twice_under_two_names():
    """A runner file that includes another benchmark's file is fine (it names it); two runner
    files holding the same benchmarks from the same run are not."""
    seen = {}
    for f in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        results = json.loads(f.read_text())
        for name, r in results.get("benchmarks", {}).items():
            if "included_from" in r:
                continue
            fingerprint = json.dumps(r, sort_keys=True)
            assert fingerprint not in seen, f"{f.name}'s {name} repeats {seen.get(fingerprint)}"
            seen[fingerprint] = f"{f.name}'s {name}"


def test_generate_results_hold_tokens_per_second_ratios_and_the_bound(quick_results):
    gen = quick_results[0]["benchmarks"]["generate"]
    assert set(gen["runs"]) == {"b1_greedy", "b1_top_k", "b2_greedy", "b2_top_k"}
    assert gen["sides"] == ["gpt1f", "transformers"]                   # --no-compile: no compiled side
    assert gen["bound_tokens_per_s_batch1"] == pytest.approx(
        gen["copy_bandwidth"]["bytes_per_s"] / gen["bytes_per_new_token_batch1"])
    for name, r in gen["runs"].items():
        for side, s in r["sides"].items():
            assert len(s["times_s"]) == gen["steps"] and s["new_tokens"] == gen["new_tokens"]
            assert s["tokens_per_s"] == pytest.approx(r["batch"] * s["new_tokens"] / s["median_s"])
        pairs = zip(r["sides"]["transformers"]["times_s"], r["sides"]["gpt1f"]["times_s"])
        assert sorted(r["speedup_gpt1f"]["ratios"]) == pytest.approx(sorted(b / o for b, o in pairs))
        if r["batch"] == 1:
            assert r["bandwidth_fraction_gpt1f"] == pytest.approx(
                r["sides"]["gpt1f"]["tokens_per_s"] / gen["bound_tokens_per_s_batch1"])
        if r["mode"] == "greedy":      # the peer holds the same weights: the same greedy tokens
            assert r["greedy_equals_transformers"] is True, name


def test_generate_bytes_per_token_counts_weights_and_live_cache():
    from benchmarks import bench_generate

    cfg = gpt1f.Config.gpt1(n_special=0)
    params = gpt1f.param_shapes(cfg)
    weights = sum(math.prod(s) for k, s in params.items() if k.startswith("model/h"))
    weights += cfg.n_vocab * cfg.n_embd                          # the tied head's token rows
    kv = 2 * 12 * 192 * 768
    assert bench_generate.bytes_per_new_token(cfg, 192) == 4 * (weights + kv)


# ---------------------------------------------------------------------------------------------
# The helpers


def test_flop_params_counts_everything_but_the_position_rows():
    for cfg in (gpt1f.Config.tiny(), gpt1f.Config.gpt1(n_ctx=77)):
        n = gpt1f.count_params({k: torch.empty(s, device="meta")
                                for k, s in gpt1f.param_shapes(cfg).items()})
        assert common.flop_params(cfg) == n - cfg.n_ctx * cfg.n_embd


def counted_flops(cfg, tokens, *, lm_head: bool, backward: bool) -> int:
    """Matmul FLOPs that torch's FlopCounterMode counts for the 117M model over ``tokens``
    [8, 2, 77] on the meta device (shapes only): the blocks, then optionally the tied head over
    the token and special rows, then optionally the backward of the sum of the outputs."""
    from torch.utils.flop_counter import FlopCounterMode

    params = {k: torch.empty(s, device="meta", requires_grad=backward)
              for k, s in gpt1f.param_shapes(cfg).items()}
    with FlopCounterMode(display=False) as counter:
        out = gpt1f.transformer(params, tokens, cfg=cfg)
        if lm_head:
            out = out @ params["model/we:0"][:cfg.n_vocab + cfg.n_special].T
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def test_flop_formula_at_the_rocstories_shape_agrees_with_a_count_of_the_matmuls():
    """The formula's 2 N T also charges every bias and gain as a multiply-add (N counts them) and
    leaves out the [B, C] classifier; at 117M that keeps it within 0.2% of the matmul count."""
    cfg = gpt1f.Config.gpt1(n_ctx=77)
    tokens = torch.zeros(8, 2, 77, dtype=torch.long, device="meta")
    t = tokens.numel()
    for formula, count in [
        (common.train_flops(cfg, t), counted_flops(cfg, tokens, lm_head=True, backward=True)),
        (common.forward_flops(cfg, t), counted_flops(cfg, tokens, lm_head=True, backward=False)),
        (common.forward_flops(cfg, t, lm_head=False),
         counted_flops(cfg, tokens, lm_head=False, backward=False)),
    ]:
        assert count <= formula <= 1.002 * count
    head = common.forward_flops(cfg, t) - common.forward_flops(cfg, t, lm_head=False)
    assert head == counted_flops(cfg, tokens, lm_head=True, backward=False) - counted_flops(
        cfg, tokens, lm_head=False, backward=False)


def test_interleaved_alternates_sides_after_warmup():
    calls = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               warmup=2, steps=3, device="cpu")
    assert calls == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


STEP_CHILD = """
import sys, time
from benchmarks import common
if sys.argv[1] == 'fail':
    raise SystemExit('cannot build this side')
calls = []
common.serve_steps(lambda: (calls.append(1), time.sleep(0.01 * len(calls))), 'cpu', {'ready': 1})
"""


def test_step_process_times_its_own_steps_and_reports_a_failed_child(tmp_path):
    (tmp_path / "step_child.py").write_text(STEP_CHILD)
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env_path]))
    try:
        child = common.StepProcess("step_child", ["ok"])
        assert child.info == {"ready": 1}
        times = common.interleaved({"child": child}, warmup=1, steps=3, device="cpu")["child"]
        child.close()
        assert child.proc.returncode == 0
        # the child's nth step sleeps n * 10 ms: the warm-up was step 1
        assert all(n * 0.01 <= t < n * 0.01 + 0.05 for n, t in zip((2, 3, 4), times)), times
        with pytest.raises(RuntimeError, match="cannot build this side"):
            common.StepProcess("step_child", ["fail"])
    finally:
        if env_path is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = env_path


def test_ratio_summary_is_per_pair():
    r = common.ratio_summary([2.0, 3.0, 8.0], [1.0, 3.0, 2.0])
    assert r["ratios"] == [1.0, 2.0, 4.0]
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.0, 4.0)


def test_rocstories_batch_shape_mask_and_special_tokens():
    cfg = gpt1f.Config.gpt1(n_ctx=77)
    b = bench_train.rocstories_batch(cfg)
    assert b["tokens"].shape == b["mask"].shape == (8, 2, 77) and b["label"].shape == (8,)
    lengths = b["lengths"]
    assert lengths.min() >= math.ceil(40 / 77 * 77) and lengths.max() <= 77
    assert torch.equal(b["mask"].sum(-1).long(), lengths)
    assert (b["tokens"][..., 0] == cfg.n_vocab).all()                        # _start_
    last = b["tokens"].gather(-1, (lengths - 1)[..., None])[..., 0]
    assert (last == cfg.clf_token).all()                                      # _classify_
    assert ((b["tokens"] == cfg.clf_token).sum(-1) == 1).all()
    assert (b["tokens"][b["mask"] == 0] == 0).all()
    inputs = bench_train.hf_inputs(b)
    assert torch.equal(inputs["mc_token_ids"], lengths - 1)
    assert ((inputs["labels"] == -100) == (b["mask"] == 0)).all()
    assert torch.equal(bench_train.rocstories_batch(cfg)["tokens"], b["tokens"])   # fixed seed


def test_cuda_step_recipe_compiles_on_cpu_without_recompiling():
    """The GPU benchmark's gpt1f step (bf16 autocast head, fp32 params and moments, one compiled
    graph, keys made up front) traced on CPU with aot_eager, so the path cannot rot untested."""
    from torch._dynamo.testing import CompileCounterWithBackend

    cfg = bench_train.bench_config(quick=True)
    params = gpt1f.init_params(cfg, seed=0)
    before = {k: v.clone() for k, v in params.items()}
    batch = bench_train.gpt1f_batch(bench_train.rocstories_batch(cfg, n_stories=2))
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    step, _ = bench_train.gpt1f_train_step(cfg, params, batch, compile=True,
                                           compile_kwargs={"backend": counter},
                                           amp_dtype=torch.bfloat16)
    losses = [step() for _ in range(3)]
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} graphs"
    assert all(torch.isfinite(loss) and loss.dtype == torch.float32 for loss in losses)
    assert all(v.dtype == torch.float32 for v in params.values())
    assert not torch.equal(params["model/h0/mlp/c_fc/w:0"], before["model/h0/mlp/c_fc/w:0"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")
def test_cuda_compiled_step_equals_eager_and_bf16_step_trains():
    """On a GPU: the inductor-compiled float32 step equals eager; the bf16-autocast step with CUDA
    graphs (params and moments at fixed addresses) trains; compiled bf16 eval scores match."""
    cfg = bench_train.bench_config(quick=True)
    batch = bench_train.rocstories_batch(cfg, device="cuda")
    fresh = lambda: {k: v.cuda() for k, v in gpt1f.init_params(cfg, seed=0).items()}  # noqa: E731
    torch._dynamo.reset()
    eager, compiled = fresh(), fresh()
    step_e, _ = bench_train.gpt1f_train_step(cfg, eager, bench_train.gpt1f_batch(batch), compile=False,
                                             device="cuda")
    step_c, _ = bench_train.gpt1f_train_step(cfg, compiled, bench_train.gpt1f_batch(batch), compile=True,
                                             device="cuda")
    for _ in range(2):
        torch.testing.assert_close(step_c(), step_e(), rtol=1e-4, atol=1e-5)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)

    bf16 = fresh()
    before = bf16["model/h0/attn/c_attn/w:0"].clone()
    step_b, _ = bench_train.gpt1f_train_step(cfg, bf16, bench_train.gpt1f_batch(batch), compile=True,
                                             compile_kwargs={"mode": "reduce-overhead"},
                                             amp_dtype=torch.bfloat16, device="cuda")
    losses = [step_b().clone() for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert bf16["model/h0/attn/c_attn/w:0"].dtype == torch.float32
    assert not torch.equal(bf16["model/h0/attn/c_attn/w:0"], before)

    params = fresh()
    score, _ = bench_train.gpt1f_eval(cfg, params, batch["tokens"], compile=True,
                                      amp_dtype=torch.bfloat16, device="cuda")
    ref = gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=cfg)
    torch.testing.assert_close(score().float(), ref, rtol=0, atol=0.05)


@pytest.mark.parametrize("module", ["bench_train", "bench_memory"])
def test_usage_lines_name_only_flags_the_parser_takes(module):
    import importlib
    import re

    mod = importlib.import_module(f"benchmarks.{module}")
    usage = [line for line in mod.__doc__.splitlines() if f"python -m benchmarks.{module}" in line]
    flags = {flag for line in usage for flag in re.findall(r"--[a-z][a-z-]*", line)}
    known = set(mod.arg_parser()._option_string_actions)
    assert usage and flags and flags <= known, flags - known
    assert mod.arg_parser().parse_args(["--compile"]).compile is True
    assert mod.arg_parser().parse_args(["--no-compile"]).compile is False


def test_research_benchmark_quick_reports_both_comparisons():
    from benchmarks.common import run_json_subprocess

    r = run_json_subprocess("benchmarks.bench_research", ["--quick", "--steps", "2"], timeout=600)
    assert set(r["sides"]) == {"ensemble", "single", "lora", "full"}
    sides = r["sides"]
    assert sides["ensemble"]["trainable"] == r["seeds"] * sides["full"]["trainable"]
    assert sides["lora"]["trainable"] < sides["full"]["trainable"]
    assert r["lora_trainable_fraction"] == pytest.approx(
        sides["lora"]["trainable"] / sides["full"]["trainable"])
    assert sorted(r["ensemble_speedup_over_single"]["ratios"]) == pytest.approx(sorted(
        s / e for s, e in zip(sides["single"]["times_s"], sides["ensemble"]["times_s"])))
    assert all(s["peak_rss_bytes"] > 0 and len(s["times_s"]) == 2 for s in sides.values())


def test_lm_head_benchmark_compares_slices_whole_and_plain_on_the_same_values():
    from benchmarks import bench_lm_head
    r = bench_lm_head.run(quick=True, warmup=1, steps=2)
    assert set(r["sides"]) == {"sliced", "whole", "plain"}
    assert r["vocab_rows"] < r["shape"]["vocab"]                 # the quick run has several slices
    assert r["shape"]["rows"] == int(bench_lm_head.head_inputs(True)[3][:, 1:].sum())
    assert all(d < 1e-5 for d in r["max_abs_diff_to_sliced"].values())
    assert sorted(r["speedup_over_whole"]["ratios"]) == pytest.approx(sorted(
        w / s for w, s in zip(r["sides"]["whole"]["times_s"], r["sides"]["sliced"]["times_s"])))
    assert all(len(side["times_s"]) == 2 for side in r["sides"].values())


ROOT_CHILD = """
import gpt1f
from benchmarks import common
common.serve_steps(lambda: None, 'cpu', {'gpt1f': gpt1f.__file__})
"""


def test_a_step_process_imports_gpt1f_from_the_checkout_it_runs_in(tmp_path):
    """bench_commits' sides each run their own tree's code, not the installed package."""
    (tmp_path / "gpt1f").mkdir()
    (tmp_path / "gpt1f" / "__init__.py").write_text("")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    (tmp_path / "root_child.py").write_text(ROOT_CHILD)
    proc = common.StepProcess("root_child", [], root=tmp_path)
    try:
        assert proc.info["gpt1f"] == str(tmp_path / "gpt1f" / "__init__.py")
        assert proc() >= 0
    finally:
        proc.close()


def test_commits_benchmark_steps_a_revision_and_this_tree_in_turn():
    import tempfile
    from pathlib import Path

    from benchmarks import bench_commits

    def temp_checkouts():
        return set(Path(tempfile.gettempdir()).glob("gpt1f_rev_*"))

    before = temp_checkouts()
    r = bench_commits.run("HEAD", quick=True, rounds=1, steps=2, warmup=1)
    assert temp_checkouts() == before                                    # its directory too
    assert r["rev_commit"] == r["tree_commit"] == bench_commits.git("rev-parse", "HEAD")
    assert {side: len(s["times_s"]) for side, s in r["sides"].items()} == {"rev": 2, "tree": 2}
    assert sorted(r["tree_speedup"]["ratios"]) == pytest.approx(sorted(
        a / b for a, b in zip(r["sides"]["rev"]["times_s"], r["sides"]["tree"]["times_s"])))
    assert "gpt1f_rev_" not in bench_commits.git("worktree", "list")      # removed afterwards
    with pytest.raises(ValueError, match="no-such-revision"):
        bench_commits.run("no-such-revision", quick=True)


def test_real_token_flops_equal_the_padded_formula_without_padding_and_count_less_with_it():
    cfg = gpt1f.Config.gpt1(n_ctx=77)
    assert common.train_flops_real(cfg, [77] * 16) == common.train_flops(cfg, 16 * 77)
    assert common.forward_flops_real(cfg, [77] * 4, lm_head=False) == common.forward_flops(cfg, 4 * 77, lm_head=False)
    lengths = bench_train.rocstories_batch(cfg)["lengths"].flatten().tolist()
    padded, real = common.train_flops(cfg, 16 * 77), common.train_flops_real(cfg, lengths)
    fraction = sum(lengths) / (16 * 77)                 # 892 / 1232
    assert 0.95 * fraction < real / padded < fraction   # attention grows as len^2: a bit below


def test_finetune_estimate_adds_the_first_call_to_the_remaining_median_steps():
    result = {"train": {"first_call_s": {"gpt1f": 100.0, "gpt1f_eager": 3.0},
                        "sides": {"gpt1f": {"median_s": 1.0}, "gpt1f_eager": {"median_s": 2.0}}}}
    est = bench_train.finetune_estimate(result, n_stories=8)
    assert est["steps"] == 138 * 32 // 8
    assert est["gpt1f_s"] == 100.0 + (est["steps"] - 1) * 1.0
    assert est["gpt1f_eager_s"] == 3.0 + (est["steps"] - 1) * 2.0
    assert est["gpt1f_over_gpt1f_eager"] == est["gpt1f_eager_s"] / est["gpt1f_s"]


def test_the_2018_port_adapter_maps_every_parameter_once_and_names_a_wrong_folder(tmp_path):
    from benchmarks import port2018
    cfg = gpt1f.Config.tiny()
    params = gpt1f.init_params(cfg, seed=0)
    state = port2018.state_dict(cfg, params)
    assert len(state) == len(params)
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in params.values())
    assert state["transformer.h.1.mlp.c_fc.w"].shape == (cfg.n_embd, 4 * cfg.n_embd)
    with pytest.raises(FileNotFoundError, match="model_pytorch.py"):
        port2018.load_modules(tmp_path)


@pytest.mark.skipif(not os.environ.get("GPT1F_PORT_DIR"),
                    reason="needs a checkout of the 2018 port in $GPT1F_PORT_DIR (not part of this project)")
def test_the_2018_port_scores_what_gpt1f_scores_and_trains():
    from benchmarks import port2018
    cfg = bench_train.bench_config(quick=True)
    params = gpt1f.init_params(cfg, seed=0)
    batch = bench_train.rocstories_batch(cfg, n_stories=3)
    modules = port2018.load_modules(port2018.port_dir())
    net = port2018.model(cfg, params, modules)
    want = gpt1f.multiple_choice_logits(params, batch["tokens"], cfg=cfg)
    torch.testing.assert_close(port2018.eval_call(cfg, net, batch["tokens"])(), want, rtol=1e-5, atol=1e-5)
    step = port2018.train_step(cfg, net, bench_train.gpt1f_batch(batch), modules, lm_coef=0.5, t_total=10)
    before = net.transformer.embed.weight.detach().clone()
    assert math.isfinite(step())
    assert not torch.equal(net.transformer.embed.weight, before)
