"""A fine-tuning command's run, for any task: the seeds' folders, locks and fingerprints, the loop,
the reports, and the exit code of every way a run can end.

``train_rocstories.py`` and ``python -m gpt1f.finetune`` differ only in their data flags and in
how they read a task's data; both end in :func:`run_seeds` under :func:`exit_code`.

Under torchrun (``torchrun --nproc_per_node N train_rocstories.py ...``) :func:`run_seeds` starts
the ranks' process group, refuses a world size that does not divide ``--accum`` and ranks that
disagree on the settings or the data (one collective), and runs the loop data-parallel; rank 0
alone holds the run's lock, prints and writes. A worker that torchrun restarts (``--max-restarts``)
continues from the run's latest checkpoint as with ``--resume``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import statistics
import sys
from typing import Callable

import torch

from .. import checkpoint, distributed, memory
from ..checkpoint import CheckpointError, CheckpointWriteError
from ..distributed import World, WorldError
from ..params import param_shapes
from ..rocstories import DataError
from . import flags, loop
from .errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, BadInput, Diverged,
                     Interrupted)
from .runs import check_checkpoints, check_outputs, run_lock, run_paths
from .task import Data, Task

METRIC_NAMES = {"acc": "accuracy", "f1": "F1", "mcc": "Matthews correlation",
                "pearson": "Pearson correlation", "spearman": "Spearman correlation"}


def exit_code(argv, parse: Callable, run: Callable) -> int:
    """``run(parse(argv))`` with its errors turned into one line on stderr and an exit code:
    2 bad input (before any work), 1 a diverged run or a failed checkpoint write, 130 Ctrl-C."""
    args = parse(argv)
    threads = torch.get_num_threads()
    try:
        flags.check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.limit_heap and not memory.limit_heap_retention():
            print("warning: --limit_heap needs glibc; ignored", file=sys.stderr)
        return run(args)
    except (BadInput, DataError, CheckpointError, WorldError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Diverged, CheckpointWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as e:
        print(f"{e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)


def seed_runs(args, desc: str, check: bool = True) -> dict:
    """Every seed's Run (``desc``, or ``desc_seedS`` with several seeds), outputs checked."""
    seeds = [args.seed + i for i in range(args.seeds)]
    runs = {}
    for seed in seeds:
        name = desc if args.seeds == 1 else f"{desc}_seed{seed}"
        runs[seed] = run_paths(desc=name, log_dir=args.log_dir, save_dir=args.save_dir,
                               submission_dir=args.submission_dir,
                               submission_name=args.submission_name)
        if check:
            check_outputs(runs[seed], submit=args.submit, resume=args.resume, overwrite=args.overwrite)
    return runs


def run_seeds(args, *, task: Task, desc: str, prepare: Callable[[], Data],
              fingerprint_flags: tuple[str, ...] = (), title: str | None = None) -> int:
    """Prepare the data, then fine-tune every seed (each folder locked) and report.

    ``fingerprint_flags``: the command's own flags a resumed run must share (beside the model,
    the optimizer, the data digest and the research modes).
    """
    world = start_world(args)
    try:
        with contextlib.ExitStack() as quiet:
            if not world.is_main:           # rank 0 reports; the others print errors only
                os.environ["TQDM_DISABLE"] = "1"
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            return _run_seeds(args, world, task=task, desc=desc, prepare=prepare,
                              fingerprint_flags=fingerprint_flags, title=title)
    finally:
        distributed.close_world(world)


def start_world(args) -> World:
    """This process's rank (one process without torchrun), checked before any work: the research
    modes run in one process, and the world size must divide ``--accum``; then the rendezvous."""
    world = distributed.world_from_env(device=flags.device_name(args))
    if world.distributed:
        research = [f for f, on in (("--vmap_seeds", args.vmap_seeds), ("--dp_clip", args.dp_clip),
                                    ("--lora_rank", args.lora_rank)) if on]
        if research:
            raise BadInput(f"{' '.join(research)} run in one process; start without torchrun")
        distributed.micro_batch_share(args.accum, world)
        world = distributed.init_world(world.device)
    return world


def resume_after_restart(args, runs: dict) -> None:
    """A worker torchrun restarted (``$TORCHELASTIC_RESTART_COUNT`` > 0) continues the failed
    attempt: ``--resume`` when the run has a checkpoint, else ``--overwrite`` of what that attempt
    left (its log)."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) < 1:
        return
    saved = any(checkpoint.steps(run.latest) for run in runs.values())
    args.resume, args.overwrite = saved, not saved


def _run_seeds(args, world: World, *, task: Task, desc: str, prepare: Callable[[], Data],
               fingerprint_flags: tuple[str, ...], title: str | None) -> int:
    resume_after_restart(args, seed_runs(args, desc, check=False))
    runs = seed_runs(args, desc)
    with contextlib.ExitStack() as locks:
        data = prepare()
        if args.analysis and data.splits.get("test", {}).get("label") is None:
            raise BadInput("--analysis needs a labelled test split")
        n_train = len(data.splits["train"]["label"])
        if n_train < args.n_batch * args.accum:
            raise BadInput(f"{n_train} training examples make no batch of --n_batch x --accum = "
                           f"{args.n_batch * args.accum}")
        cfg = flags.model_config(args, n_vocab=data.n_vocab, n_ctx=data.n_ctx)
        settings = flags.settings(args, cfg=cfg, dp_noise=dp_noise(args, n_train))
        settings = dataclasses.replace(settings, device=str(world.device), world=world)
        if world.distributed and args.compile is None:   # the compiled data-parallel step is
            settings = dataclasses.replace(settings, compile=False)   # untested: opt in only
        same = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("world", "device")}
        distributed.check_agreement(world, settings=same,
                                    config=dataclasses.asdict(cfg), data=data_digest(data),
                                    flags={k: v for k, v in vars(args).items()})
        header = dict(vars(args))
        lanes = []
        for seed, run in runs.items():
            fingerprint = run_fingerprint(args, cfg, data, seed, settings, fingerprint_flags)
            check_checkpoints(run, fingerprint, resume=args.resume, overwrite=args.overwrite)
            if world.is_main:
                locks.enter_context(run_lock(run.latest.parent))
            lanes.append(loop.Lane(seed, run, {**header, "seed": seed}, fingerprint))
        sizes = " / ".join(f"{len(s['tokens'])} {name}" for name, s in data.splits.items())
        print(f"{desc}: {sizes} examples, n_ctx {cfg.n_ctx}, "
              f"{sum(math.prod(s) for s in param_shapes(cfg, task.n_class).values()):,} parameters")
        if settings.dp:
            print(f"DP-SGD: clip {settings.dp.clip:g}, noise {settings.dp.noise:.4g}, Poisson "
                  f"sample rate {settings.batch / n_train:.4g}, delta {settings.dp.delta:g}")

        def initial(seed: int):
            return flags.initial_params(args, cfg, seed, n_class=task.n_class)

        groups = [lanes] if settings.vmap_seeds else [[lane] for lane in lanes]
        results = []
        for group in groups:
            for lane, result in zip(group, loop.fine_tune(task, data, cfg, settings, group,
                                                          initial_params=initial)):
                results.append(result)
                print_summary(task, result)
                if args.submit:
                    print(f"submission: {lane.run.submission}")
    if args.analysis and args.seeds == 1:
        print_analysis(task, results[0], title or task.name)
    if args.seeds > 1:
        print_seeds(task, results)
    return 0


def dp_noise(args, n_train: int) -> float | None:
    """The noise multiplier that spends --dp_epsilon over the whole run (Opacus's RDP accountant)."""
    if args.dp_epsilon is None:
        return None
    from .. import dp

    batch = args.n_batch * args.accum
    steps = (n_train // batch) * args.n_iter
    delta = args.dp_delta or 1e-5
    try:
        return dp.noise_for_epsilon(target_epsilon=args.dp_epsilon, delta=delta,
                                    sample_rate=batch / n_train, steps=steps)
    except ImportError as e:
        raise BadInput(str(e)) from None


def data_digest(data: Data) -> str:
    digest = hashlib.sha1()
    for name in sorted(data.splits):
        for key in ("tokens", "label"):
            if data.splits[name].get(key) is not None:
                digest.update(data.splits[name][key].tobytes())
    return digest.hexdigest()


SAME = ("n_iter", "n_batch", "accum", "max_grad_norm", "lr", "lr_warmup", "l2", "vector_l2",
        "lr_schedule", "n_transfer", "lm_coef", "b1", "b2", "e", "dtype")


def run_fingerprint(args, cfg, data: Data, seed: int, settings: loop.Settings,
                    extra: tuple[str, ...]) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    research = {"vmap_seeds": settings.vmap_seeds,
                "dp": None if settings.dp is None else list(settings.dp.__dict__.values()),
                "lora": None if settings.lora is None else [settings.lora.rank, *settings.lora.targets]}
    research = {k: v for k, v in research.items() if v}     # absent: as before these modes
    return {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seed": seed, "data_sha1": data_digest(data),
            **{k: getattr(args, k) for k in (*extra, *SAME)}, **research}


# ---------------------------------------------------------------- reports

def print_summary(task: Task, result: loop.Result) -> None:
    names = [f"{p}_{m}" for p in ("tr", "va") for m in task.metrics]
    print(f"\n{'epochs':>6} {'updates':>8} {'tr_cost':>8} {'va_cost':>8} "
          + " ".join(f"{n:>7}" for n in names))
    for h in result.history:
        print(f"{h['n_epochs']:>6} {h['n_updates']:>8} {h['tr_cost']:>8.3f} {h['va_cost']:>8.3f} "
              + " ".join(f"{h[n]:>7.2f}" for n in names))
    test = ("n/a (no labels)" if result.test is None else
            f"{result.test[task.primary]:.2f}")
    name = METRIC_NAMES[task.primary]
    print(f"best valid {name} {result.best_score:.2f} | test {name} {test} | "
          f"{result.step_seconds:.1f} s in train steps, {result.examples_per_s:.1f} examples/s")


def print_analysis(task: Task, result: loop.Result, title: str) -> None:
    name = METRIC_NAMES[task.primary].capitalize()
    print(f"{title} Valid {name}: {result.best_score:.2f}")
    print(f"{title} Test {name}:  {result.test[task.primary]:.2f}")


def print_seeds(task: Task, results: list[loop.Result]) -> None:
    print(f"\n{'seed':>6} {'valid':>7} {'test':>7}  ({METRIC_NAMES[task.primary]})")
    for r in results:
        test = "    n/a" if r.test is None else f"{r.test[task.primary]:>7.2f}"
        print(f"{r.seed:>6} {r.best_score:>7.2f} {test}")
    tests = [r.test[task.primary] for r in results if r.test is not None]
    test = f"{statistics.median(tests):>7.2f}" if tests else "    n/a"
    print(f"{'median':>6} {statistics.median(r.best_score for r in results):>7.2f} {test}")
