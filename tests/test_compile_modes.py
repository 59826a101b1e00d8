"""Which compile mode a fine-tuning run gets (``--compile``, ``auto_compile``) and the regional
scorer and embedding node that mode uses."""
import pytest
import torch

import gpt1f
from gpt1f import random as grandom
from gpt1f import regional
from gpt1f.embedding import dropped_lookup
from gpt1f.finetune import cli, flags
from gpt1f.finetune.errors import BadInput
from tests.test_train_rocstories import dirs

TINY = ["--task", "classification", "--dataset", "synthetic", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "4", "--n_transfer", "-1"]


def parse(tmp_path, *extra):
    return cli.parse_args([*TINY, *dirs(tmp_path), *extra])


@pytest.mark.parametrize("extra, want", [((), "auto"), (("--compile",), True),
                                         (("--compile", "regional"), "regional"),
                                         (("--compile", "step"), True), (("--no-compile",), False)])
def test_the_compile_flag_maps_to_make_train_step(tmp_path, extra, want):
    args = parse(tmp_path, *extra)
    cfg = flags.model_config(args, n_vocab=50, n_ctx=16)
    got = flags.settings(args, cfg=cfg).compile
    assert got == (flags.auto_compile("cpu", cfg) if want == "auto" else want)


def test_auto_compile_is_regional_for_gpt1_on_cpu_and_eager_for_small_models():
    gpt1 = gpt1f.Config.gpt1(n_ctx=77)
    assert flags.auto_compile("cpu", gpt1) == ("regional" if flags.has_cpp_compiler() else False)
    assert flags.auto_compile("cpu", gpt1, plain=False) is False          # DP, LoRA, vmapped seeds
    assert flags.auto_compile("cpu", gpt1f.Config.tiny()) is False
    assert flags.auto_compile("cpu", gpt1.replace(n_layer=2)) is False    # 14M block parameters
    assert flags.auto_compile("cpu", gpt1.replace(n_layer=3)) == flags.auto_compile("cpu", gpt1)   # 21M
    assert flags.auto_compile("cuda", gpt1f.Config.tiny()) is True


@pytest.mark.parametrize("extra", [("--seeds", "2", "--vmap_seeds"), ("--lora_rank", "2")])
def test_regional_compile_is_refused_for_the_research_steps(tmp_path, extra):
    with pytest.raises(BadInput, match="--compile regional"):
        flags.check_args(parse(tmp_path, "--compile", "regional", *extra))


def test_the_regional_scorer_equals_the_eager_one():
    torch._dynamo.reset()
    cfg = gpt1f.Config.tiny()
    params = gpt1f.init_params(cfg, seed=0, dtype=torch.float64)
    tokens = torch.randint(0, cfg.n_vocab, (3, 2, 12), generator=torch.Generator().manual_seed(0))
    tokens[..., 0], tokens[0, :, 7], tokens[1:, :, 11] = cfg.n_vocab, cfg.clf_token, cfg.clf_token
    regions = regional.compiled_regions(backend="aot_eager")
    score = regional.with_regions(gpt1f.multiple_choice_logits, regions)
    eager = gpt1f.multiple_choice_logits(params, tokens, cfg=cfg, packed=True)
    torch.testing.assert_close(score(params, tokens, cfg=cfg, packed=True), eager, rtol=0, atol=1e-13)
    assert regional.current_regions() is regional.EAGER


def test_the_dropped_lookup_node_gives_the_eager_values_and_gradients():
    """One autograd node for we's dropout and the lookup: the same embedding, the same gradient of
    ``we`` (from the tied head's side and from the looked-up rows, the mask applied to both)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    we = torch.randn(40, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([3, 3, 17, 39, 30, 31, 32, 33])                   # tokens (3 twice), positions
    g_we, g_rows = torch.randn(40, 8, generator=gen, dtype=torch.float64), torch.randn(4, 8, generator=gen,
                                                                                     dtype=torch.float64)
    key = grandom.key(5)
    node = regional.compiled_regions(backend="aot_eager").dropped_lookup
    results = []
    for fn in (dropped_lookup, node):
        dropped, embedded = fn(we, rows, 0.3, key=key, train=True)
        (grad,) = torch.autograd.grad((dropped * g_we).sum() + (embedded * g_rows).sum(), we)
        results.append((dropped, embedded, grad))
    for eager, fused in zip(*results):
        torch.testing.assert_close(fused, eager, rtol=0, atol=1e-15)
    assert (results[0][0] == 0).any()                                    # dropout did drop
    (grad_only_rows,) = torch.autograd.grad(node(we, rows, 0.3, key=key, train=True)[1].sum(), we)
    (want,) = torch.autograd.grad(dropped_lookup(we, rows, 0.3, key=key, train=True)[1].sum(), we)
    torch.testing.assert_close(grad_only_rows, want, rtol=0, atol=0)      # no gradient from the head
