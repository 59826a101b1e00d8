"""The TF release's learning-rate schedules: values at the warm-up boundary and at t = t_total."""
import math

import pytest
import torch

from gpt1f import schedules

W = 0.002
F64 = torch.float64

# (x, warmup_linear, warmup_cosine, warmup_constant), worked out by hand from TF's opt.py.
HAND = [
    (0.0, 0.0, 0.0, 0.0),                                   # x = 0 (no update sees it)
    (0.001, 0.5 * 0.999, 0.5, 0.5),                          # half-way through warm-up
    (0.002, 1.0 * 0.998, 1.0, 1.0),                          # x == warmup still counts as warm-up
    (0.0021, 0.9979, 0.5 * (1 + math.cos(math.pi * 0.0021)), 1.0),  # first step after it
    (0.5, 0.5, 0.5, 1.0),
    (1.0, 0.0, 0.0, 1.0),                                    # t == t_total
]


@pytest.mark.parametrize("x, linear, cosine, constant", HAND)
def test_schedules_match_hand_computed_values(x, linear, cosine, constant):
    xt = torch.tensor(x, dtype=F64)
    assert schedules.warmup_linear(xt, W).item() == pytest.approx(linear, rel=1e-15, abs=1e-15)
    assert schedules.warmup_cosine(xt, W).item() == pytest.approx(cosine, rel=1e-15, abs=1e-15)
    assert schedules.warmup_constant(xt, W).item() == pytest.approx(constant, rel=1e-15, abs=1e-15)


def test_warmup_linear_is_tf_ramp_times_decay_not_a_switch():
    """TF multiplies the ramp by (1 - x): at the boundary the factor is 1 - warmup, not 1."""
    w = 0.2
    assert schedules.warmup_linear(torch.tensor(0.1, dtype=F64), w).item() == pytest.approx(0.5 * 0.9)
    assert schedules.warmup_linear(torch.tensor(0.2, dtype=F64), w).item() == pytest.approx(0.8)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_python_numbers_give_tensors(name):
    """The 2018 port's warmup_cosine crashed on a Python float."""
    fn = schedules.get(name)
    for x in (0.0, 0.3, 1, 0):
        out = fn(x, W)
        assert isinstance(out, torch.Tensor) and out.shape == ()
        assert out.item() == pytest.approx(fn(torch.tensor(float(x), dtype=F64), W).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_elementwise_over_a_tensor_of_progress_and_keeps_dtype(name):
    fn = schedules.get(name)
    x = torch.linspace(0, 1.2, 60, dtype=F64).reshape(3, 1, 20)
    out = fn(x, 0.1)
    assert out.shape == x.shape and out.dtype == F64
    loop = torch.stack([fn(xi, 0.1) for xi in x.flatten()]).reshape(x.shape)
    assert torch.equal(out, loop)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_schedules_compile_without_graph_breaks(name):
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    fn = schedules.get(name)
    compiled = torch.compile(lambda x: fn(x, 0.1), backend=counter, fullgraph=True)
    for x in (0.0, 0.05, 0.1, 0.7):
        xt = torch.tensor(x, dtype=F64)
        assert torch.equal(compiled(xt), fn(xt, 0.1))
    assert counter.frame_count == 1


@pytest.mark.parametrize("name, expected", [("warmup_linear", [1.0, 0.5]),
                                             ("warmup_cosine", [1.0, 0.5]),
                                             ("warmup_constant", [1.0, 1.0])])
def test_zero_warmup_means_no_warmup(name, expected):
    """TF would compute 0/0 at x == 0; here the decay starts at once."""
    out = schedules.get(name)(torch.tensor([0.0, 0.5], dtype=F64), 0.0)
    assert out.tolist() == pytest.approx(expected, rel=1e-15)


def test_unknown_schedule_name_raises_listing_the_known_ones():
    with pytest.raises(ValueError, match="warmup_linear"):
        schedules.get("warmup_exponential")
    custom = lambda x, warmup: torch.ones_like(torch.as_tensor(x))  # noqa: E731
    assert schedules.get(custom) is custom
