"""The release's small files, shipped inside the package so that nothing needs a network.

``encoder_bpe_40000.json`` and ``vocab_40000.bpe`` (the BPE vocabulary) and ``params_shapes.json``
are copied byte for byte from the ``model/`` folder of openai/finetune-transformer-lm (MIT licence,
``LICENSE`` beside them); their git-blob SHA-1s are ``gpt1f.download.RELEASE_SHA1``'s. The weight
shards (``params_*.npy``, 480 MB) are downloaded, never shipped.
"""
from __future__ import annotations

import importlib.resources
import pathlib

NAMES = ("encoder_bpe_40000.json", "vocab_40000.bpe", "params_shapes.json")


def path(name: str) -> pathlib.Path:
    """The packaged copy of the release file ``name``, one of ``NAMES``."""
    if name not in NAMES:
        raise KeyError(f"{name!r} is not shipped with gpt1f; the packaged release files are {NAMES}")
    found = pathlib.Path(str(importlib.resources.files(__name__) / name))
    if not found.is_file():
        raise FileNotFoundError(f"{found} is missing: gpt1f was installed without its package data "
                                "(pip install gpt1f from a wheel or source tree ships it)")
    return found
