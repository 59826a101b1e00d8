import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_GPT = ROOT.parent / "shared" / "openai-gpt"


@pytest.fixture
def shared_gpt_dir() -> pathlib.Path:
    """The real release vocabulary and shapes, beside the checkout; skips when absent."""
    if not (SHARED_GPT / "encoder_bpe_40000.json").is_file():
        pytest.skip(f"real GPT-1 release files not found in {SHARED_GPT}")
    return SHARED_GPT
