#!/usr/bin/env python3
"""Fine-tune GPT-1 on the ROCStories Cloze Test, as the TF original's train.py does, resumably.

    python train_rocstories.py --data_dir data/rocstories --submit --analysis
    python train_rocstories.py --data_dir data/rocstories --seeds 10        # the 10-run median
    python train_rocstories.py --dataset synthetic --data_dir data/synthetic --n_layer 2 \\
        --n_embd 64 --n_head 4 --n_transfer -1 --lm_coef 0 --embd_pdrop 0 --lr 1e-3 --n_iter 2 \\
        --analysis                       # a from-scratch model on generated stories, ~1 min on CPU

A preset of the library's fine-tuning loop (``gpt1f.finetune``): this file reads and transforms
the stories exactly as the original does; the loop, checkpoints and reports are the library's.
Flags keep the original's names and defaults (effective batch 32 = --n_batch 8 x --accum 4 on
one device). Outputs: ``log_dir/desc.jsonl`` (first line the arguments, then one line per
evaluation), checkpoints in ``save_dir/desc/{latest,best}`` (``--resume`` continues the latest,
falling back past a damaged step), ``submission_dir/desc/ROCStories.tsv`` with ``--submit``
(``--submission_name`` renames the file). Outputs of an earlier run are never replaced without
``--overwrite`` or ``--resume``, and one run at a time holds ``save_dir/desc`` (a lock).

Bad input (every flag, unwritable output folders) exits with code 2 and one line, before any
work; a non-finite loss, a skipped update or non-finite parameters stop the run (code 1) naming
the update and the last checkpoint, which never holds non-finite parameters; a failed checkpoint
write exits 1 leaving the earlier ones intact; Ctrl-C exits 130 saying where to resume from.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from tqdm.auto import tqdm

from gpt1f import rocstories
from gpt1f.finetune import flags
from gpt1f.finetune.command import exit_code, run_seeds
from gpt1f.finetune.errors import BadInput
from gpt1f.finetune.flags import model_config, text_encoder  # noqa: F401 (the script's API)
from gpt1f.finetune.runs import plot_history  # noqa: F401
from gpt1f.finetune.task import Data, Task

SUBMISSION_FILE = "ROCStories.tsv"
TASK = Task("rocstories", "multiple_choice", n_classes=2, metrics=("acc",))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", type=str, default="rocstories", choices=("rocstories", "synthetic"))
    p.add_argument("--n_valid", type=int, default=rocstories.N_VALID,
                   help="stories of the labelled file held out for validation")
    p.add_argument("--n_synthetic", type=int, default=1871,
                   help="stories per file written by --dataset synthetic")
    flags.add_flags(p, submission_name=SUBMISSION_FILE)
    return p.parse_args(argv)


def check_data_flags(args) -> None:
    for name in ("n_valid", "n_synthetic"):
        if getattr(args, name) < 1:
            raise BadInput(f"--{name}={getattr(args, name)} must be at least 1")


def prepare_synthetic(args) -> None:
    """Write synthetic Cloze Test files into --data_dir, never over files that are not synthetic."""
    data_dir = pathlib.Path(args.data_dir)
    for name in (rocstories.VALID_FILE, rocstories.TEST_FILE):
        if (data_dir / name).is_file() and not rocstories.is_synthetic(data_dir / name):
            raise BadInput(f"{data_dir / name} exists and is not synthetic data; choose another "
                           "--data_dir for --dataset synthetic")
    rocstories.write_synthetic(data_dir, n_rows=args.n_synthetic)


def encode_splits(encoder, stories: dict, chunk: int = 1024) -> dict[str, rocstories.Encoded]:
    """BPE ids of every story and ending of every split, under one progress bar."""
    total = sum(3 * len(split.story) for split in stories.values())
    bar = tqdm(total=total, desc="encode", unit="text", leave=False)

    def encode(texts: list[str]) -> list[list[int]]:
        ids = []
        for start in range(0, len(texts), chunk):
            ids.extend(encoder.encode(texts[start:start + chunk]))
            bar.update(len(texts[start:start + chunk]))
        return ids

    with bar:
        return {name: rocstories.encode_split(split, encode) for name, split in stories.items()}


def prepare_data(args, encoder) -> Data:
    """Read, split, encode and pad the three splits; n_ctx shrunk to the longest example."""
    stories = rocstories.load_rocstories(args.data_dir, n_valid=args.n_valid)
    encoded = encode_splits(encoder, stories)
    n_ctx = rocstories.fit_n_ctx(list(encoded.values()), args.n_ctx)
    special = encoder.special
    arrays = {}
    for name, split in encoded.items():
        tokens, mask = rocstories.transform(
            split, n_ctx=n_ctx, max_len=rocstories.max_len_for(args.n_ctx),
            start=special["_start_"], delimiter=special["_delimiter_"], clf=special["_classify_"])
        arrays[name] = {"tokens": tokens, "mask": mask, "label": split.label}
    return Data(arrays, encoder.n_vocab, n_ctx)


def run(args) -> int:
    check_data_flags(args)

    def prepare() -> Data:
        if args.dataset == "synthetic":
            prepare_synthetic(args)
        rocstories.check_data_dir(args.data_dir)
        data = prepare_data(args, text_encoder(args))
        if args.analysis and data.splits["test"]["label"] is None:
            raise BadInput(f"--analysis needs the test file's {rocstories.LABEL_COLUMN} column, "
                           f"which {pathlib.Path(args.data_dir) / rocstories.TEST_FILE} lacks")
        return data

    return run_seeds(args, task=TASK, desc=args.desc or args.dataset, prepare=prepare,
                     fingerprint_flags=("dataset", "n_valid"), title="ROCStories")


def main(argv=None) -> int:
    return exit_code(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
