"""``python -m gpt1f.finetune``: fine-tune GPT-1 on any task of the paper, or on your own files.

    python -m gpt1f.finetune --task sst2 --data_dir glue_data --submit      # a preset (the paper's)
    python -m gpt1f.finetune --task entailment --train t.tsv --valid v.tsv \\
        --text_cols premise,hypothesis --label_col label --label_map entails,neutral
    python -m gpt1f.finetune --task similarity --dataset synthetic --data_dir data/sim \\
        --n_layer 1 --n_embd 32 --n_head 4 --n_transfer -1 --lr 1e-2 --n_iter 2   # a minute on CPU

Presets (``--task NAME``, see ``gpt1f.finetune.presets``) name the format, the head, the metrics
and the classes; the flags' defaults are the paper's recipe (lr 6.25e-5, 32 examples an update =
--n_batch 8 x --accum 4, 3 epochs, warmup 0.2% then linear decay, clf dropout 0.1, lm_coef 0.5,
l2 0.01). The outputs, resume, seeds and research modes are ``train_rocstories.py``'s; the
predictions go to ``submission_dir/desc/<task>.tsv``.
"""
from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from . import flags, presets, readers, synthetic
from .command import exit_code, run_seeds
from .errors import BadInput
from .task import KINDS, Data

TASKS = (*sorted(presets.PRESETS), *KINDS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpt1f.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS,
                   help="a preset of the paper's tasks, or a kind for your own files")
    p.add_argument("--dataset", choices=("files", "synthetic"), default="files",
                   help="synthetic: write and use a generated dataset of the task's kind")
    p.add_argument("--n_synthetic", type=int, default=400, help="training examples of --dataset synthetic")
    p.add_argument("--train", type=str, default=None, help="your own training file (.tsv/.csv/.jsonl)")
    p.add_argument("--valid", type=str, default=None, help="your own validation file")
    p.add_argument("--test", type=str, default=None, help="your own test file (labels optional)")
    p.add_argument("--text_cols", type=str, default=None,
                   help="comma-separated text columns, in the order of the task's transformation")
    p.add_argument("--label_col", type=str, default="label")
    p.add_argument("--label_map", type=str, default=None,
                   help="class names in class order (neg,pos) or name=index pairs")
    p.add_argument("--choice_cols", type=str, default=None,
                   help="multiple choice: one column per choice (or one JSONL key holding a list)")
    p.add_argument("--n_classes", type=int, default=None, help="classes (default: from the labels)")
    p.add_argument("--objective", choices=("mse", "bce"), default=None,
                   help="similarity: regress a score (mse) or classify a 0/1 label (bce)")
    flags.add_flags(p, submission_name=None)
    args = p.parse_args(argv)
    if args.submission_name is None:
        args.submission_name = f"{args.task}.tsv"
    return args


def check_task_flags(args) -> None:
    """The data flags fit the task: a preset reads --data_dir, a kind needs files or synthetic."""
    own = [f"--{f}" for f in ("train", "valid", "test", "text_cols", "label_map", "choice_cols",
                              "n_classes", "objective") if getattr(args, f) is not None]
    if args.n_synthetic < 1:
        raise BadInput(f"--n_synthetic={args.n_synthetic} must be at least 1")
    if args.task in presets.PRESETS:
        if own or args.dataset == "synthetic":
            raise BadInput(f"--task {args.task} is a preset that reads --data_dir; "
                           f"{' '.join(own) or '--dataset synthetic'} belong to a task kind "
                           f"({', '.join(KINDS)})")
        return
    if args.dataset == "synthetic":
        if own:
            raise BadInput(f"--dataset synthetic writes its own files: drop {' '.join(own)}")
        return
    missing = [f"--{f}" for f in ("train", "valid", "text_cols") if getattr(args, f) is None]
    if missing:
        raise BadInput(f"--task {args.task} on your own files needs {' '.join(missing)} "
                       "(or --dataset synthetic)")


def split_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(c.strip() for c in text.split(",") if c.strip())


def load_preset(args) -> presets.Preset:
    if args.task in presets.PRESETS:
        return presets.PRESETS[args.task]
    if args.dataset == "synthetic":
        synthetic.write_synthetic(args.task, args.data_dir, n_rows=args.n_synthetic, seed=0)
        return synthetic.synthetic_preset(args.task, args.data_dir)
    return presets.table_preset(
        args.task, train=args.train, valid=args.valid, test=args.test,
        text_cols=split_list(args.text_cols), label_col=args.label_col,
        label_map=None if args.label_map is None else readers.parse_label_map(args.label_map),
        choice_cols=split_list(args.choice_cols), n_classes=args.n_classes,
        objective=args.objective)


def run(args) -> int:
    from .transforms import prepare_data

    check_task_flags(args)
    preset = load_preset(args)
    task = preset.task
    desc = args.desc or (task.name if args.dataset == "files" else f"synthetic_{args.task}")

    def prepare() -> Data:
        splits = preset.read(args.data_dir)
        if "test" not in splits and args.submit:
            raise BadInput(f"--submit: {task.name} has no test split here")
        data, trimmed = prepare_data(task, splits, flags.text_encoder(args), n_ctx=args.n_ctx)
        for name, count in trimmed.items():
            if count:
                tqdm.write(f"{name}: {count} of {len(splits[name].source)} examples trimmed to fit "
                           f"n_ctx {args.n_ctx}")
        return data

    return run_seeds(args, task=task, desc=desc, prepare=prepare,
                     fingerprint_flags=("task", "dataset"), title=task.name)


def main(argv=None) -> int:
    return exit_code(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
