"""The fine-tuning loop every task shares: batches -> train step -> evaluation -> log, checkpoints.

The recipe, as the TF original runs it for ROCStories, for any :class:`~gpt1f.finetune.task.Task`:

    for each epoch: a permutation of the training set, a pure function of (seed, epoch)
        for each update: n_batch x accum examples, dropout key fold_in(key(seed), update)
            params, opt_state = train_step(...)           # one host sync: loss, lr, skipped
            at updates 1000, 2000, 4000, ... of epoch 1: evaluate
            every save_every updates: checkpoint (latest)
        evaluate; checkpoint (latest); the best valid score so far is kept (best)
    predict the test split with the best parameters

Evaluation scores the first n_valid training examples and the valid split (the task's cost and
metrics), one JSONL line each time. Everything a resumed run needs is the checkpoint and the seed,
so ``resume`` continues bit for bit.

Several seeds run one after the other, or together as *lanes* of one vmapped step
(``Settings.vmap_seeds``): each lane keeps its own data order, dropout keys, log and checkpoints,
so a lane computes what its seed's own run would. Under torchrun (``Settings.world``) every rank
builds the same state, runs its share of each update's micro-batches and its share of every
evaluation (:mod:`gpt1f.distributed`); rank 0 alone writes the log, checkpoints, plot and
predictions. DP-SGD (``Settings.dp``) draws every update's
examples by Poisson sampling and steps with :func:`gpt1f.dp.dp_train_step`; LoRA
(``Settings.lora``) trains adapters over frozen initial parameters.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
from typing import Callable, NamedTuple

import numpy as np
import optree
import torch
from tqdm.auto import tqdm

from .. import checkpoint, distributed, dp, ensemble, lora, optim, rocstories
from ..checks import all_finite
from ..config import Config
from ..distributed import World, on_main
from ..heads import similarity_task
from ..loss import loss_fn
from ..random import fold_in, key as make_key
from ..train import make_train_step
from . import metrics
from .errors import Diverged, Interrupted
from .evaluation import log_entry, make_scorer, predict, prediction_strings
from .runs import (Run, append_log, last_checkpoint, plot_history, resume_hint, resume_state,
                   write_log, write_predictions)
from .task import Data, Task

LOG_AT_UPDATES = (1000, 2000, 4000, 8000, 16000, 32000)  # extra first-epoch evaluations, as TF
SAMPLING_TAG = 0x5A3D1E   # DP sampling keys: fold_in(key, tag) then the update (never a step count)


@dataclasses.dataclass(frozen=True)
class DPSettings:
    clip: float                     # C: per-example global-norm bound
    noise: float                    # sigma (found from a target epsilon by the command line)
    delta: float = 1e-5             # for the epsilon logged each evaluation


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    targets: tuple[str, ...] = lora.DEFAULT_TARGETS


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to train; the paper's recipe by default (lr 6.25e-5, 32 examples an update, 3 epochs,
    warmup 0.2% then linear decay, lm_coef 0.5, l2 0.01, gradient norm clipped at 1)."""
    n_iter: int = 3
    n_batch: int = 8
    accum: int = 4
    lm_coef: float = 0.5
    lr: float = 6.25e-5
    lr_warmup: float = 0.002
    lr_schedule: str = "warmup_linear"
    b1: float = 0.9
    b2: float = 0.999
    e: float = 1e-8
    l2: float = 0.01
    vector_l2: bool = False
    max_grad_norm: float = 1.0
    save_every: int = 100           # checkpoint every N updates and at every epoch end; 0: ends
    device: str = "cpu"
    dtype: str = "fp32"             # bf16: autocast the forward
    compile: bool | str = False     # make_train_step's: False, True (the whole step), "regional"
    submit: bool = False            # write the test predictions
    plot: bool = False
    resume: bool = False
    vmap_seeds: bool = False
    dp: DPSettings | None = None
    lora: LoraSettings | None = None
    world: World = World()          # torchrun's ranks; one process by default

    @property
    def batch(self) -> int:
        """Examples per update."""
        return self.n_batch * self.accum


class Lane(NamedTuple):
    """One seed's run: its seed, where it writes, its log header and resume fingerprint."""
    seed: int
    run: Run
    header: dict
    fingerprint: dict


@dataclasses.dataclass
class Progress:
    """Where training stands; with the seed this is all the RNG state there is."""
    n_updates: int = 0
    epoch: int = 0            # the epoch in progress (n_iter when training is done)
    position: int = 0         # updates done within that epoch
    best_score: float = -math.inf   # the task's primary metric on valid
    history: list = dataclasses.field(default_factory=list)  # the log's evaluation lines


class Result(NamedTuple):
    seed: int
    best_score: float                 # best valid value of the task's primary metric
    test: dict[str, float] | None     # the best parameters' test metrics (None: no labels)
    history: list[dict]
    step_seconds: float               # time in training steps (no evaluation, no checkpoints)
    examples_per_s: float


@functools.lru_cache(maxsize=16)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """:func:`gpt1f.rocstories.epoch_order`, cached read-only: every update of the epoch slices it."""
    order = rocstories.epoch_order(seed, epoch, n)
    order.flags.writeable = False
    return order


def make_optimizer(s: Settings, t_total: int) -> optim.Optimizer:
    clip = -1.0 if s.dp else s.max_grad_norm        # DP-SGD clips per example instead
    return optim.openai_adam(s.lr, schedule=s.lr_schedule, warmup=s.lr_warmup, t_total=t_total,
                             b1=s.b1, b2=s.b2, e=s.e, l2=s.l2, vector_l2=s.vector_l2,
                             max_grad_norm=clip)


def head_of(task: Task):
    """``train_step``'s head: the built-in name, or the similarity task with its objective bound."""
    if task.head == "similarity" and task.objective != "mse":
        return functools.partial(similarity_task, objective=task.objective)
    return task.head


# ---------------------------------------------------------------- what is trained

class Trainer(NamedTuple):
    """One lane's training state ``{'params' | 'adapters': ..., 'opt_state': ...}`` and its step.

    ``step(state, batch, key) -> (state, metrics)`` (stacked lanes: every argument and metric
    with a leading lane axis); ``model(state, params)`` the parameters to evaluate, given the
    lane's initial ``params``; ``fresh(params, seed)`` a lane's first state.
    """
    step: Callable
    model: Callable
    fresh: Callable
    trained: str


def make_trainer(task: Task, cfg: Config, opt: optim.Optimizer, s: Settings,
                 base: dict | None, n_train: int) -> Trainer:
    """The step of ``s``'s mode: plain, vmapped over lanes, DP-SGD (the expected batch size is
    ``s.batch`` of ``n_train``) or LoRA over ``base``."""
    common = dict(lm_coef=s.lm_coef, accum=s.accum, head=head_of(task))
    if s.lora:
        if base is None:
            raise ValueError("LoRA needs the frozen base parameters")
        raw = lora.make_train_step(cfg, opt, base, compile=s.compile, **common)

        def fresh(params, seed):
            adapters = lora.init(params, rank=s.lora.rank, targets=s.lora.targets,
                                 key=make_key(seed, device=next(iter(params.values())).device))
            return {"adapters": adapters, "opt_state": opt.init(adapters)}
        return Trainer(_state_step(raw, "adapters"),
                       lambda state, params: lora.apply(params, state["adapters"]), fresh, "adapters")
    if s.dp:
        loss = functools.partial(loss_fn, cfg=cfg, head=head_of(task), train=True,
                                 lm_coef=s.lm_coef, fused_lm=False)
        config = dp.DPConfig(s.dp.clip, s.dp.noise, float(s.batch)).check()
        raw = functools.partial(dp.dp_train_step, opt=opt, chunk_size=s.n_batch, loss=loss, dp=config)
        step = _state_step(_with_lr(raw, opt), "params")
    elif s.vmap_seeds:
        step = _state_step(ensemble.make_ensemble_step(cfg, opt, compile=s.compile, **common), "params")
    else:
        share = distributed.micro_batch_share(s.accum, s.world)
        reduce = distributed.grad_reducer(s.world) if s.world.distributed else None
        # in place: the loop holds one copy of the parameters and moments, and the update does
        # not allocate 117M-float tensors (the initial parameters are the loop's own: fine_tune)
        step = _state_step(make_train_step(cfg, opt, compile=s.compile, inplace=True,
                                           **{**common, "accum": share.count},
                                           micro_batches=(share.offset, share.total),
                                           reduce_grads=reduce), "params")
    return Trainer(step, lambda state, params: state["params"],
                   lambda params, seed: {"params": params, "opt_state": opt.init(params)}, "params")


def _state_step(raw: Callable, trained: str) -> Callable:
    def step(state, batch, key):
        new, opt_state, out = raw(state[trained], state["opt_state"], batch, key)
        return {trained: new, "opt_state": opt_state}, out
    return step


def _with_lr(raw: Callable, opt: optim.Optimizer) -> Callable:
    """A DP step's metrics with the train step's ``lr`` and ``nonfinite`` (skipped updates)."""
    def step(params, opt_state, batch, key):
        lr, skipped = opt.learning_rate(opt_state), opt_state.skipped.clone()
        params, opt_state, out = raw(params, opt_state, batch, key)
        return params, opt_state, {**out, "lr": lr, "nonfinite": opt_state.skipped - skipped}
    return step


# ---------------------------------------------------------------- one run of one or more lanes

class Job(NamedTuple):
    """What stays fixed while a run trains: the task, its settings, data, step and scorer."""
    task: Task
    s: Settings
    lanes: list[Lane]
    trainer: Trainer
    scorer: Callable
    splits: dict[str, dict[str, torch.Tensor | None]]
    base: list[dict]            # each lane's initial parameters (LoRA's frozen base)
    keys: list[torch.Tensor]    # each lane's root key
    cast: object                # the autocast context of --dtype
    n_batches: int              # updates an epoch


@dataclasses.dataclass
class Clock:
    step_seconds: float = 0.0   # in train steps only
    examples: int = 0


def fine_tune(task: Task, data: Data, cfg: Config, s: Settings, lanes: list[Lane], *,
              initial_params: Callable[[int], dict]) -> list[Result]:
    """Train every lane from its initial (or resumed) state; evaluate, log and checkpoint as TF.

    ``initial_params(seed)``: a lane's parameters before fine-tuning (pre-trained or drawn), on
    any device; fresh tensors for each call, since the plain step trains them in place. Lanes run
    together when ``s.vmap_seeds``, else there is one.
    """
    job = setup(task, data, cfg, s, lanes, initial_params)
    states, progress = start(job)
    at, clock = progress[0], Clock()       # the lanes advance together: lane 0 tells where
    try:
        while at.epoch < s.n_iter:
            bar = tqdm(range(at.position, job.n_batches), initial=at.position, total=job.n_batches,
                       desc=f"epoch {at.epoch + 1}/{s.n_iter}", unit="update", leave=False)
            for b in bar:
                states = update(job, states, at, b, clock, bar)
                if at.n_updates in LOG_AT_UPDATES and at.epoch == 0:
                    evaluate(job, states, progress, n_epochs=0)
                if s.save_every and at.n_updates % s.save_every == 0 and b + 1 < job.n_batches:
                    save_latest(job, states, progress)
            bar.close()
            at.epoch, at.position = at.epoch + 1, 0
            evaluate(job, states, progress, n_epochs=at.epoch)
            save_latest(job, states, progress)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at update {at.n_updates}. {resume_hint(lanes[0].run)}") from None
    return [finish(job, i, lane_state(states, i, s), p, clock) for i, p in enumerate(progress)]


def setup(task: Task, data: Data, cfg: Config, s: Settings, lanes: list[Lane],
          initial_params: Callable[[int], dict]) -> Job:
    device = torch.device(s.device)
    splits = {name: {k: None if v is None else torch.as_tensor(v, device=device)
                     for k, v in split.items()} for name, split in data.splits.items()}
    n_train = len(splits["train"]["label"])
    n_batches = n_train // s.batch                     # the last partial batch is dropped, as TF
    opt = make_optimizer(s, t_total=n_batches * s.n_iter)
    base = [to_device(initial_params(lane.seed), device) for lane in lanes]
    return Job(task, s, lanes, make_trainer(task, cfg, opt, s, base[0] if s.lora else None, n_train),
                make_scorer(task, cfg, s.compile), splits, base,
                [make_key(lane.seed, device=device) for lane in lanes],
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.dtype == "bf16"), n_batches)


def update(job: Job, states, at: Progress, b: int, clock: Clock, bar) -> object:
    """Update ``b`` of the epoch in progress on every lane; ``at`` moves on; the one host sync."""
    s, train = job.s, job.splits["train"]
    n_train = len(train["label"])
    if s.dp:
        rows = [dp.poisson_sample(fold_in(fold_in(k, SAMPLING_TAG), at.n_updates), n_train,
                                  s.batch / n_train) for k in job.keys]
    else:
        rows = [torch.tensor(epoch_order(lane.seed, at.epoch, n_train)[b * s.batch:(b + 1) * s.batch],
                                device=train["tokens"].device) for lane in job.lanes]
    step_keys = [fold_in(k, at.n_updates) for k in job.keys]
    tick = time.perf_counter()
    with job.cast:
        states, out = job.trainer.step(states, *lane_inputs(train, rows, step_keys, s))
    losses, lrs, skipped = (torch.atleast_1d(out[k].double()).tolist() for k in ("loss", "lr", "nonfinite"))
    seconds = time.perf_counter() - tick
    clock.step_seconds, clock.examples = clock.step_seconds + seconds, clock.examples + sum(map(len, rows))
    at.n_updates, at.position = at.n_updates + 1, b + 1
    for lane, loss, skip in zip(job.lanes, losses, skipped):
        check_update(lane, loss, skip, lrs[0], at)
    bar.set_postfix(loss=f"{np.mean(losses):.3f}", lr=f"{lrs[0]:.2e}",
                    ex_s=f"{s.batch * len(job.lanes) / seconds:.0f}")
    return states


def evaluate(job: Job, states, progress: list[Progress], n_epochs: int) -> None:
    """Every lane's log line; a lane's best valid score so far is kept as its ``best`` checkpoint."""
    task, s, at = job.task, job.s, progress[0]
    n_train = len(job.splits["train"]["label"])
    for i, (lane, p) in enumerate(zip(job.lanes, progress)):
        state = lane_state(states, i, s)
        params = job.trainer.model(state, job.base[i])
        ensure_finite(params, lane.run, at)
        entry = log_entry(task, job.scorer, params, job.splits, batch=s.batch, cast=job.cast,
                          n_updates=at.n_updates, n_epochs=n_epochs, world=s.world)
        if s.dp:                                   # the privacy spent so far, before "time"
            entry = {**{k: v for k, v in entry.items() if k != "time"},
                     "epsilon": dp.epsilon(noise=s.dp.noise, sample_rate=s.batch / n_train,
                                           steps=at.n_updates, delta=s.dp.delta),
                     "time": entry["time"]}
        p.history.append(entry)
        on_main(s.world, append_log, lane.run.log, entry)
        tqdm.write(" ".join(f"{v:.3f}" if isinstance(v, float) and "cost" in k else
                            f"{v:.2f}" if isinstance(v, float) else str(v)
                            for k, v in entry.items() if k != "time"))
        score = entry[f"va_{task.primary}"]
        if score > p.best_score:
            p.best_score = score
            on_main(s.world, checkpoint.save, lane.run.best, at.n_updates,
                    {job.trainer.trained: state[job.trainer.trained]},
                    {"n_epochs": n_epochs, "n_updates": at.n_updates, f"va_{task.primary}": score},
                    max_to_keep=1, replace=True)   # a resumed run may redo this step


def save_latest(job: Job, states, progress: list[Progress]) -> None:
    """Every lane's state and progress as a ``latest`` checkpoint of this update."""
    at = progress[0]
    for i, (lane, p) in enumerate(zip(job.lanes, progress)):
        p.n_updates, p.epoch, p.position = at.n_updates, at.epoch, at.position
        state = lane_state(states, i, job.s)
        ensure_finite(state[job.trainer.trained], lane.run, at)
        meta = {"progress": dataclasses.asdict(p), "seed": lane.seed, "header": lane.header,
                "fingerprint": lane.fingerprint}
        on_main(job.s.world, checkpoint.save, lane.run.latest, at.n_updates, state, meta)


def finish(job: Job, i: int, state, p: Progress, clock: Clock) -> Result:
    """Lane ``i``'s test predictions with its best parameters (file, metrics), adapters, plot."""
    task, s, lane, trained = job.task, job.s, job.lanes[i], job.trainer.trained
    ensure_finite(state[trained], lane.run, p)
    best, _ = checkpoint.restore(lane.run.best, {trained: state[trained]})
    test, scores = job.splits.get("test"), None
    if test is not None:
        logits = predict(job.scorer, job.trainer.model(best, job.base[i]), test["tokens"], s.batch,
                         "predict test", job.cast, s.world)
        if s.submit:
            on_main(s.world, write_predictions, lane.run.submission, prediction_strings(task, logits))
        if test["label"] is not None:
            scores = metrics.evaluate(task, logits, test["label"].cpu().numpy())
    if s.lora:
        on_main(s.world, lora.save, best["adapters"], lane.run.latest.parent / "adapters",
                rank=s.lora.rank, targets=s.lora.targets)
    if s.plot:
        on_main(s.world, plot_history, p.history, lane.run.plot, task.primary)
    examples = clock.examples // len(job.lanes)
    return Result(lane.seed, p.best_score, scores, p.history, clock.step_seconds,
                  examples / clock.step_seconds if clock.step_seconds else 0.0)


# ---------------------------------------------------------------- lanes, state, checks

def start(job: Job):
    """Every lane's state (stacked when vmapped) and progress, resumed or fresh; its log written."""
    s, device = job.s, job.base[0][next(iter(job.base[0]))].device
    states, progress = [], []
    for lane, params in zip(job.lanes, job.base):
        if s.resume:
            template = to_device(job.trainer.fresh(params, lane.seed), device)
            state, meta = distributed.main_first(s.world, resume_state, lane.run, template)
            p = Progress(**meta["progress"])
            tqdm.write(f"resumed {lane.run.desc} at update {p.n_updates} (epoch {p.epoch + 1}, "
                       f"update {p.position})")
        else:
            state, p = job.trainer.fresh(params, lane.seed), Progress()
            for folder in (lane.run.latest, lane.run.best):   # reached only with --overwrite
                on_main(s.world, shutil.rmtree, folder, ignore_errors=True)
        states.append(state)
        progress.append(p)
        on_main(s.world, write_log, lane.run.log, lane.header, p.history)
    steps = {p.n_updates for p in progress}
    if len(steps) > 1:
        raise checkpoint.CheckpointError(
            f"the seeds' latest checkpoints are at different updates ({sorted(steps)}); resume "
            "them without --vmap_seeds, one at a time")
    return (ensemble.stack(states) if s.vmap_seeds else states[0]), progress


def lane_state(states, i: int, s: Settings):
    """Lane ``i``'s state: a view into the stacked state when vmapped."""
    return optree.tree_map(lambda x: x[i], states) if s.vmap_seeds else states


def lane_inputs(train: dict, rows: list[torch.Tensor], keys: list[torch.Tensor], s: Settings):
    """The step's batch and key: one lane's, or every lane's stacked on a leading axis."""
    batches = [{k: v[r] for k, v in train.items()} for r in rows]
    if not s.vmap_seeds:
        return batches[0], keys[0]
    return {k: torch.stack([b[k] for b in batches]) for k in batches[0]}, torch.stack(keys)


def check_update(lane: Lane, loss: float, skipped: float, lr: float, at: Progress) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"the training loss is {loss} at update {at.n_updates} (epoch "
                       f"{at.epoch + 1}); stopped. {last_checkpoint(lane.run)}")
    if skipped:
        raise Diverged(f"update {at.n_updates} (epoch {at.epoch + 1}) was skipped: its gradients, "
                       f"or the parameters it would give, are not finite (lr {lr:.3g}); stopped. "
                       f"{last_checkpoint(lane.run)}")


def ensure_finite(params, run: Run, at: Progress) -> None:
    if not bool(all_finite(params)):
        raise Diverged(f"the parameters after update {at.n_updates} (epoch {at.epoch + 1}) are not "
                       f"finite; stopped before evaluating or saving them. {last_checkpoint(run)}")


def to_device(tree, device: torch.device):
    return optree.tree_map(lambda t: t.to(device), tree)
