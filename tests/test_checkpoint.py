"""Checkpoints: exact round trips of a training-state pytree, retention, refusals."""
import collections

import pytest
import torch

from gpt1f import checkpoint as ck
from gpt1f import Config, init_params

State = collections.namedtuple("State", "count mu")


def training_state(seed=0):
    params = init_params(Config.tiny(), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    mu = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    return {"params": params, "opt_state": State(torch.tensor(seed + 7), mu), "epoch": 2}


def assert_identical(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_identical(a[k], b[k])
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    else:
        assert a == b


def test_round_trip_is_bit_exact_and_keeps_types(tmp_path):
    state = training_state()
    meta = {"step": 5, "history": [{"va_acc": 50.0}], "fingerprint": {"n_layer": 2}}
    ck.save(tmp_path, 5, state, meta)
    template = training_state(seed=1)   # same structure, other values
    restored, got_meta = ck.restore(tmp_path, template)
    assert_identical(restored, state)
    assert got_meta == meta


def test_keeps_the_last_two_and_restores_the_latest_by_default(tmp_path):
    for step in (1, 2, 3):
        ck.save(tmp_path, step, training_state(step), {"step": step})
    assert ck.steps(tmp_path) == [2, 3] and ck.latest_step(tmp_path) == 3
    restored, meta = ck.restore(tmp_path, training_state())
    assert meta == {"step": 3}
    assert torch.equal(restored["params"]["model/we:0"], training_state(3)["params"]["model/we:0"])
    _, meta2 = ck.restore(tmp_path, training_state(), step=2)
    assert meta2 == {"step": 2} and ck.read_meta(tmp_path) == {"step": 3}


def test_params_alone_can_be_taken_from_a_full_state(tmp_path):
    state = training_state()
    ck.save(tmp_path, 1, state, {})
    restored, _ = ck.restore(tmp_path, {"params": init_params(Config.tiny(), seed=9)})
    assert_identical(restored["params"], state["params"])


def test_restore_follows_the_template_device_and_dtype(tmp_path):
    ck.save(tmp_path, 1, {"w": torch.arange(4.0)}, {})
    restored, _ = ck.restore(tmp_path, {"w": torch.zeros(4, dtype=torch.float64)})
    assert restored["w"].dtype == torch.float64 and restored["w"].tolist() == [0, 1, 2, 3]


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no checkpoint in"):
        ck.restore(tmp_path / "empty", training_state())
    assert ck.latest_step(tmp_path / "empty") is None
    ck.save(tmp_path, 1, training_state(), {})
    other = {"params": init_params(Config.tiny(n_embd=16), seed=0)}
    expected = r"params/model/clf/w:0: shape \[32, 1\] in the checkpoint, \[16, 1\] expected"
    with pytest.raises(ck.CheckpointError, match=expected + ".*and 21 more"):
        ck.restore(tmp_path, other)
    with pytest.raises(ck.CheckpointError, match="params/extra: missing"):
        ck.restore(tmp_path, {"params": {"extra": torch.zeros(1)}})
    with pytest.raises(ck.CheckpointError, match="step 4"):
        ck.restore(tmp_path, training_state(), step=4)


def test_fingerprint_check_lists_each_difference():
    saved = {"n_layer": 2, "lr": 0.001, "shape": [1, 2]}
    ck.check_fingerprint(saved, {"n_layer": 2, "lr": 0.001, "shape": (1, 2)}, "somewhere")
    with pytest.raises(ck.CheckpointError) as info:
        ck.check_fingerprint(saved, {"n_layer": 3, "lr": 0.001, "seed": 1}, "somewhere")
    message = str(info.value)
    assert "n_layer: 2 in the checkpoint, 3 now" in message
    assert "seed: None in the checkpoint, 1 now" in message and "shape" in message
    assert "lr" not in message


def test_an_unfinished_save_is_ignored_and_only_the_writer_removes_it(tmp_path):
    ck.save(tmp_path, 1, training_state(), {"step": 1})
    unfinished = tmp_path / "3.orbax-checkpoint-tmp"   # what a process killed mid-save leaves
    (unfinished / "state").mkdir(parents=True)
    assert ck.steps(tmp_path) == [1]
    _, meta = ck.restore(tmp_path, training_state())
    assert meta == {"step": 1} and ck.read_meta(tmp_path) == {"step": 1}
    assert unfinished.is_dir()          # readers leave it: another process may be writing it
    ck.save(tmp_path, 2, training_state(), {"step": 2})
    assert not unfinished.exists() and ck.steps(tmp_path) == [1, 2]
