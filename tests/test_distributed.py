"""gpt1f.distributed: N gloo ranks compute what one process with N times the accumulation computes.

The two-rank checks share one ``torch.multiprocessing`` session (two spawned processes on
127.0.0.1, a free port, gloo): each rank runs every scenario and saves what it got, and each test
below compares one part of that against a single-process run computed here.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import gpt1f
from gpt1f import distributed
from gpt1f.distributed import (World, WorldError, all_reduce_mean, check_agreement, gather_rows,
                               grad_reducer, micro_batch_share, plan_buckets, row_shard, world_from_env)
from gpt1f.optim import openai_adam
from gpt1f.train import accumulated_grads, train_step

CFG = gpt1f.Config.tiny()                 # dropout 0.1 everywhere: the masks matter
F32, F64 = torch.float32, torch.float64
N_UPDATES, MICRO = 3, 2                   # updates per run, examples per micro-batch
EVAL_ROWS, EVAL_BLOCK = 13, 4             # 4 eval batches, the last one padded
TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(n, seed, dtype=F32):
    """Multiple-choice rows [n, 2, 12]: _start_, random tokens, _classify_, padding."""
    gen = torch.Generator().manual_seed(seed)
    t = 12
    tokens = torch.randint(0, CFG.n_vocab, (n, 2, t), generator=gen)
    lengths = torch.randint(4, t + 1, (n, 2), generator=gen)
    mask = torch.arange(t) < lengths[..., None]
    tokens = torch.where(torch.arange(t) == lengths[..., None] - 1, CFG.clf_token, tokens * mask)
    tokens[..., 0] = CFG.n_vocab
    return {"tokens": tokens, "mask": mask.to(dtype), "label": torch.randint(0, 2, (n,), generator=gen)}


def train(dtype, accum, micro_batches=None, reduce_grads=None):
    """Params after N_UPDATES updates of ``MICRO * total`` examples each, dropout on."""
    total = accum if micro_batches is None else micro_batches[1]
    params = gpt1f.init_params(CFG, seed=0, dtype=dtype)
    opt = openai_adam(1e-3, schedule="warmup_constant", warmup=0.0, t_total=100, max_grad_norm=1.0)
    state, key = opt.init(params), gpt1f.random.key(7)
    for u in range(N_UPDATES):
        batch = make_batch(MICRO * total, seed=u, dtype=dtype)
        params, state, _ = train_step(params, state, batch, gpt1f.random.fold_in(key, u), cfg=CFG,
                                      opt=opt, accum=accum, micro_batches=micro_batches,
                                      reduce_grads=reduce_grads)
    return params


@torch.no_grad()
def predict(params, tokens, block):
    """Eval scores [n, 2], every batch padded to ``block`` rows, as the fine-tuning CLI does."""
    out = []
    for start in range(0, len(tokens), block):
        chunk = tokens[start:start + block]
        pad = chunk.new_zeros((block - len(chunk), *chunk.shape[1:]))
        out.append(gpt1f.multiple_choice_logits(params, torch.cat([chunk, pad]), cfg=CFG)[:len(chunk)])
    return torch.cat(out)


def reduce_inputs(rank):
    """Per-rank tensors of two dtypes, a few hundred bytes each."""
    return [torch.arange(12, dtype=F32).reshape(3, 4) * (rank + 1), torch.full((5,), 0.25 + rank, dtype=F64),
            torch.arange(40, dtype=F32) - rank, torch.tensor(3.0 * rank, dtype=F64)]


def raise_on_rank0():
    raise OSError("disk full")


# ---------------------------------------------------------------- what each rank runs

def rank_session(rank: int, port: int, out: str) -> None:
    os.environ.update({**TORCHRUN_ENV, "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    world = distributed.init_world("cpu", timeout_s=60)
    got = {"world": world}
    reduce = grad_reducer(world)
    for dtype in (F32, F64):
        for per_rank in (1, 2):
            share = micro_batch_share(2 * per_rank, world)
            got[("train", dtype, per_rank)] = train(dtype, share.count, (share.offset, share.total), reduce)

    params = gpt1f.init_params(CFG, seed=1)
    tokens = make_batch(EVAL_ROWS, seed=9)["tokens"]
    mine = row_shard(EVAL_ROWS, world, EVAL_BLOCK)
    got["eval_shard"] = (mine.start, mine.stop)
    got["eval"] = gather_rows(predict(params, tokens[mine], EVAL_BLOCK), EVAL_ROWS, world, EVAL_BLOCK)

    inputs = reduce_inputs(rank)
    copies = [t.clone() for t in inputs]
    got["bucketed"] = all_reduce_mean(inputs, world, bucket_bytes=64)
    got["per_tensor"] = all_reduce_mean(inputs, world, per_tensor=True)
    got["inputs_untouched"] = all(torch.equal(a, b) for a, b in zip(inputs, copies))

    config = {"n_layer": 2, "lr": 1e-3}
    check_agreement(world, config=config, data="sha1-of-data")
    try:
        check_agreement(world, config={**config, "lr": 1e-3 * (1 + rank)}, data="sha1-of-data")
        got["disagreement"] = None
    except WorldError as e:
        got["disagreement"] = str(e)
    try:
        distributed.on_main(world, raise_on_rank0)
        got["on_main"] = None
    except (OSError, WorldError) as e:
        got["on_main"] = f"{type(e).__name__}: {e}"
    distributed.barrier(world)
    distributed.close_world(world)
    torch.save(got, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of two gloo ranks saved: ``[rank0, rank1]``."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_session, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


# ---------------------------------------------------------------- two ranks against one process

@pytest.fixture
def one_thread():
    """The ranks run one thread each; so does the reference, for the same matmul summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype,rtol", [(F32, 1e-6), (F64, 1e-12)])
@pytest.mark.parametrize("per_rank", [1, 2])
def test_two_ranks_equal_one_process_with_twice_the_accumulation(ranks, one_thread, dtype, rtol, per_rank):
    """Every parameter but ``model/clf/b:0``, whose gradient is zero in exact arithmetic (a shift
    shared by both choices' logits): Adam turns its rounding noise into updates of ~1e-4 (float32)
    that depend on the summation order alone. Tolerances are relative to the parameters' scale."""
    single = train(dtype, accum=2 * per_rank)
    compared = [k for k in single if k != "model/clf/b:0"]
    scale = max(float(single[k].abs().max()) for k in compared)
    for rank in ranks:
        got = rank[("train", dtype, per_rank)]
        assert got.keys() == single.keys()
        for k in compared:
            torch.testing.assert_close(got[k], single[k], rtol=rtol, atol=rtol * scale, msg=k)
    for k in single:      # the ranks hold the very same parameters
        assert torch.equal(ranks[0][("train", dtype, per_rank)][k], ranks[1][("train", dtype, per_rank)][k]), k
    start = gpt1f.init_params(CFG, seed=0, dtype=dtype)
    assert all((single[k] - start[k]).abs().max() > 1e3 * rtol * scale for k in compared)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_two_ranks_of_one_micro_batch_are_bit_identical_to_accumulation_two(ranks, one_thread, dtype):
    """Both sides compute ``(g0 + g1) / 2``: the all-reduce of two adds them in one order."""
    single = train(dtype, accum=2)
    for k in single:
        assert torch.equal(ranks[0][("train", dtype, 1)][k], single[k]), k


def test_a_rank_share_is_its_slice_of_the_update_with_global_keys():
    """Rank 1 of 2 with accum 2 runs micro-batches 2 and 3 of 4: keys fold_in(key, 2), (key, 3)."""
    params, key, batch = gpt1f.init_params(CFG, seed=0, dtype=F64), gpt1f.random.key(3), make_batch(8, 0, F64)
    grads, (loss, _, _) = accumulated_grads(params, batch, key, cfg=CFG, accum=2, micro_batches=(2, 4))
    fn = torch.func.grad_and_value(gpt1f.loss_fn)
    parts = [fn(params, {k: v[2 * g:2 * g + 2] for k, v in batch.items()}, cfg=CFG,
                key=gpt1f.random.fold_in(key, g), train=True) for g in (2, 3)]
    for k in params:
        torch.testing.assert_close(grads[k], (parts[0][0][k] + parts[1][0][k]) / 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, (parts[0][1] + parts[1][1]) / 2, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"micro_batches=\(offset=3, total=4\)"):
        accumulated_grads(params, batch, key, cfg=CFG, accum=2, micro_batches=(3, 4))


def test_eval_sharded_and_gathered_equals_one_process_bit_for_bit(ranks):
    params = gpt1f.init_params(CFG, seed=1)
    single = predict(params, make_batch(EVAL_ROWS, seed=9)["tokens"], EVAL_BLOCK)
    assert [r["eval_shard"] for r in ranks] == [(0, 8), (8, 13)]       # whole 4-row blocks
    for rank in ranks:
        assert torch.equal(rank["eval"], single)


def test_bucketed_and_per_tensor_all_reduce_give_the_mean(ranks):
    expected = [(a + b) / 2 for a, b in zip(reduce_inputs(0), reduce_inputs(1))]
    for rank in ranks:
        assert rank["inputs_untouched"]
        for how in ("bucketed", "per_tensor"):
            for got, want in zip(rank[how], expected):
                assert got.dtype == want.dtype and got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-7, atol=0)


def test_ranks_that_disagree_are_refused_by_name_on_every_rank(ranks):
    for rank in ranks:
        message = rank["disagreement"]
        assert message is not None and "config" in message and "rank 1" in message
        assert "data" not in message.split("disagree on")[1].split(":")[0]


def test_a_failure_on_rank0_stops_the_other_ranks_with_its_message(ranks):
    assert ranks[0]["on_main"] == "OSError: disk full"
    assert ranks[1]["on_main"].startswith("WorldError: rank 0 failed") and "disk full" in ranks[1]["on_main"]


# ---------------------------------------------------------------- one process: layout and start-up

def test_micro_batches_are_dealt_in_contiguous_runs():
    shares = [micro_batch_share(8, World(rank=r, size=4)) for r in range(4)]
    assert [tuple(s) for s in shares] == [(0, 2, 8), (2, 2, 8), (4, 2, 8), (6, 2, 8)]
    assert micro_batch_share(3, World()) == (0, 3, 3)


def test_a_world_size_that_does_not_divide_the_micro_batches_is_refused():
    with pytest.raises(WorldError, match=r"3 ranks cannot share an update's 4 micro-batches \(--accum 4\)"):
        micro_batch_share(4, World(rank=0, size=3))


@pytest.mark.parametrize("n,size,block", [(13, 2, 4), (5, 3, 1), (2, 4, 1), (32, 4, 8), (0, 2, 3)])
def test_row_shards_cover_every_row_once_in_order_in_whole_blocks(n, size, block):
    shards = [row_shard(n, World(rank=r, size=size), block) for r in range(size)]
    assert [i for s in shards for i in range(n)[s]] == list(range(n))
    assert all(s.start % block == 0 for s in shards if s.start < n)


def test_buckets_hold_one_dtype_in_order_within_the_size():
    tensors = [torch.zeros(10), torch.zeros(3, dtype=F64), torch.zeros(10), torch.zeros(30), torch.zeros(2)]
    assert plan_buckets(tensors, bucket_bytes=79) == [[0], [2], [3], [1], [4]]      # float32: 40, 40, 120, 8
    assert plan_buckets(tensors, bucket_bytes=80) == [[0, 2], [3], [1], [4]]
    assert plan_buckets(tensors) == [[0, 2, 3, 4], [1]]


def test_without_world_size_there_is_one_process_and_no_collective():
    world = world_from_env({}, "cpu")
    assert world == World() and world.is_main and not world.distributed
    x = [torch.ones(3)]
    assert all_reduce_mean(x, world)[0] is x[0]
    assert gather_rows(x[0], 3, world) is x[0]
    check_agreement(world, config=1)


@pytest.mark.parametrize("drop,message", [
    ("LOCAL_RANK", r"\$WORLD_SIZE is set but \$LOCAL_RANK is not"),
    ("MASTER_PORT", r"no rendezvous: \$MASTER_PORT unset for rank 0 of 2"),
    ("WORLD_SIZE", r"\$RANK is set but \$WORLD_SIZE is not"),
])
def test_a_half_set_launch_environment_is_refused_by_name(drop, message):
    environ = {k: v for k, v in TORCHRUN_ENV.items() if k != drop}
    with pytest.raises(WorldError, match=message):
        world_from_env(environ, "cpu")
    with pytest.raises(WorldError, match=r"\$RANK=2 of \$WORLD_SIZE=2"):
        world_from_env({**TORCHRUN_ENV, "RANK": "2"}, "cpu")
    with pytest.raises(WorldError, match=r"\$WORLD_SIZE='two' is not an integer"):
        world_from_env({**TORCHRUN_ENV, "WORLD_SIZE": "two"}, "cpu")


def test_a_missing_rendezvous_is_a_clear_error_not_a_hang(monkeypatch):
    port = free_port()                   # nobody serves it: rank 1 waits for a rank 0 that never comes
    for k, v in {**TORCHRUN_ENV, "RANK": "1", "LOCAL_RANK": "1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(WorldError, match=rf"rank 1 of 2: no rendezvous at 127.0.0.1:{port} \(gloo, timeout 2 s\)"):
        distributed.init_world("cpu", timeout_s=2)
    assert not torch.distributed.is_initialized()
