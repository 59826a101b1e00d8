"""limit_heap_retention: freed tensors leave the process instead of staying in glibc's heap."""
import subprocess
import sys

import pytest

from gpt1f import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc only (mallopt)")

PROBE = """
import sys, torch
from gpt1f import memory
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == 'limit':
    assert memory.limit_heap_retention()
big = torch.ones(4 << 20); del big          # a 16 MiB block freed: glibc raises its threshold
before = rss()
blocks = [torch.ones(2 << 20) for _ in range(64)]   # 64 x 8 MiB, as a step's activations
pin = torch.ones(2 << 20)                          # keeps the heap's top in use
del blocks
print((rss() - before) / 2**20)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


def test_freed_blocks_stay_resident_by_default_and_leave_with_the_limit():
    assert retained_mib("default") > 400       # most of the 512 MiB stays in the heap
    assert retained_mib("limit") < 64          # only the pinned 8 MiB and noise remain


@pytest.mark.parametrize("bad", [0, -1, 64 << 20, 1.5, "1"])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="threshold_bytes"):
        memory.limit_heap_retention(bad)
