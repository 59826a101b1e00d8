"""gpt1f.scratch: large CPU buffers kept across calls, never shared with a live tensor."""
import threading

import pytest
import torch

from gpt1f import scratch
from gpt1f.fused_lm_loss import lm_loss_mean_and_grads

from .test_fused_lm_loss import inputs


@pytest.fixture
def keep_all(monkeypatch):
    """Every size kept (the tests' tensors are far below the 32 MiB the library waits for)."""
    monkeypatch.setattr(scratch, "MIN_BYTES", 0)
    scratch.release()
    yield
    scratch.release()


def test_a_free_buffer_is_reused_and_a_held_one_never(keep_all):
    a = scratch.empty("x", (4, 5), dtype=torch.float32, device="cpu").fill_(1.0)
    b = scratch.empty("x", (4, 5), dtype=torch.float32, device="cpu").fill_(2.0)
    assert b.data_ptr() != a.data_ptr() and bool((a == 1).all())
    ptr_a = a.data_ptr()
    del a
    c = scratch.empty("x", (2, 3), dtype=torch.float32, device="cpu")    # smaller: a's buffer fits
    assert c.data_ptr() == ptr_a and c.shape == (2, 3) and c.is_contiguous() and c._base is None
    tail = b[1:]                       # a view keeps b's memory in use after b itself is gone
    ptr_b = b.data_ptr()
    del b, c
    d = scratch.empty("x", (4, 5), dtype=torch.float32, device="cpu")
    assert d.data_ptr() == ptr_a and bool((tail == 2).all())
    assert scratch.empty("x", (4, 5), dtype=torch.float32, device="cpu").data_ptr() not in (ptr_a, ptr_b)


def test_purposes_dtypes_and_larger_sizes_get_their_own_buffers(keep_all):
    a = scratch.empty("x", (8,), dtype=torch.float32, device="cpu")
    ptr = a.data_ptr()
    del a
    assert scratch.empty("y", (8,), dtype=torch.float32, device="cpu").data_ptr() != ptr
    assert scratch.empty("x", (8,), dtype=torch.float64, device="cpu").data_ptr() != ptr
    assert scratch.empty("x", (9,), dtype=torch.float32, device="cpu").data_ptr() != ptr


def test_at_most_keep_buffers_a_purpose_and_release_lets_them_go(keep_all):
    held = [scratch.empty("x", (3,), dtype=torch.float32, device="cpu").fill_(i) for i in range(4)]
    assert len(scratch._kept()[("x", torch.float32)]) == scratch.KEEP
    scratch.release()
    assert scratch._kept() == {}
    assert [int(t[0]) for t in held] == [0, 1, 2, 3]       # handed-out tensors hold their memory


def test_small_tensors_are_not_kept():
    scratch.release()
    t = scratch.empty("x", (1024,), dtype=torch.float32, device="cpu")
    assert t.shape == (1024,) and scratch._kept() == {}


def test_buffers_are_kept_per_thread(keep_all):
    a = scratch.empty("x", (8,), dtype=torch.float32, device="cpu")
    ptr = a.data_ptr()
    del a
    seen = []
    thread = threading.Thread(target=lambda: seen.append(
        scratch.empty("x", (8,), dtype=torch.float32, device="cpu").data_ptr()))
    thread.start()
    thread.join()
    assert seen and seen[0] != ptr
    assert scratch.empty("x", (8,), dtype=torch.float32, device="cpu").data_ptr() == ptr


def test_lm_loss_reuses_its_gradient_buffer_only_once_released(keep_all):
    """The LM loss's gradient of ``we`` comes out in a kept buffer: a held result is never written
    by a later call, a released one is reused, and the values are those of fresh memory."""
    on_fresh_memory = [lm_loss_mean_and_grads(*inputs(lead=(3,), seed=s), 4, True) for s in (0, 1)]
    scratch.release()
    first = lm_loss_mean_and_grads(*inputs(lead=(3,), seed=0), 4, True)
    kept = first[1].clone()
    second = lm_loss_mean_and_grads(*inputs(lead=(3,), seed=1), 4, True)
    assert second[1].data_ptr() != first[1].data_ptr()
    torch.testing.assert_close(first[1], kept, rtol=0, atol=0)
    ptr = first[1].data_ptr()
    del first
    third = lm_loss_mean_and_grads(*inputs(lead=(3,), seed=1), 4, True)
    assert third[1].data_ptr() == ptr
    for fresh, pooled in zip(on_fresh_memory[1], third):
        torch.testing.assert_close(pooled, fresh, rtol=0, atol=0)
