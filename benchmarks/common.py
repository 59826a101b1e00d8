"""Timing, FLOP-count, matmul-peak and memory helpers shared by the benchmarks.

Every timing synchronises the device before and after the timed call; peer comparisons run the
two sides interleaved step by step (A B A B ...) after warm-up, so that noise from a shared
machine falls on both alike, and report per-pair ratios.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Timing


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, steps: int,
                device) -> dict[str, list[float]]:
    """Per-call seconds of each function: ``warmup`` untimed rounds, then ``steps`` rounds, each
    round calling every function once in the given order (A B A B ...). A :class:`StepProcess`
    reports its own step's seconds; anything else is timed here."""
    def once(fn):
        return fn() if isinstance(fn, StepProcess) else timed(fn, device)
    for _ in range(warmup):
        for fn in fns.values():
            once(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return times


class StepProcess:
    """One side of a comparison in its own interpreter, stepped from here.

    ``python -m module *args``, run from the checkout ``root`` (default: this one), builds its
    side, prints one JSON line (``info``), then answers each ``step`` line on stdin with the
    seconds that step took. Sides in separate processes share the
    machine's noise when interleaved, but not an allocator, OpenMP pools or caches: in one process
    the peer's eager step ran slower after gpt1f's compiled one than on its own
    (``results/cpu2_cpu_20261126-0215_train_one_process.json`` against ``-0221_train_alone.json``).
    """

    def __init__(self, module: str, args: list[str], extra_env: dict[str, str] | None = None,
                 root: Path = REPO_ROOT):
        env = {**child_env(root), **(extra_env or {})}
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        self.info = json.loads(self._reply())

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            self._stderr.seek(0)
            raise RuntimeError(f"step process {self.proc.args} ended ({self.proc.returncode}):\n"
                               f"{self._stderr.read()[-4000:]}")
        return line

    def __call__(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._reply())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)
        self._stderr.close()


def serve_steps(fn: Callable[[], object], device, info: dict) -> None:
    """The child's side of :class:`StepProcess`: print ``info``, then time ``fn`` on each ``step``."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(repr(timed(fn, device)), flush=True)


def summary(times: list[float]) -> dict:
    """Median, min, max and the raw list of per-step seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "n": len(times), "times_s": list(times)}


def ratio_summary(baseline: list[float], ours: list[float]) -> dict:
    """Speed-up ``baseline / ours`` per interleaved pair: median and spread (min, quartiles, max)."""
    ratios = sorted(b / o for b, o in zip(baseline, ours))
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "min": ratios[0], "q1": q[0], "q3": q[2],
            "max": ratios[-1], "ratios": ratios}


# ---------------------------------------------------------------------------------------------
# FLOPs and the machine's limit


PEAK_N = {"cuda": 8192}   # a GPU needs a large product to reach its peak; elsewhere 2048^3


def matmul_peak(device, dtype: torch.dtype, *, n: int | None = None, reps: int = 10) -> dict:
    """Measured matmul throughput: median of ``reps`` timed ``[n, n] @ [n, n]`` products.

    This is the practical peak the benchmarks' MFU is measured against (2 n^3 FLOP a product).
    ``n``: default :data:`PEAK_N` for the device's type, else 2048 (the CPU peak of the issues).
    """
    n = n or PEAK_N.get(torch.device(device).type, 2048)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    times = [timed(lambda: torch.mm(a, b), device) for _ in range(reps)]
    flop = 2 * n ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flop": flop,
            "flops_per_s": flop / statistics.median(times), "times_s": times}


def benchmark_peak(device, quick: bool) -> dict:
    """The peak the suite's MFU is against: :func:`matmul_peak` in bf16 on CUDA, float32
    elsewhere; 512^3 for ``quick`` (tiny configs), else the device type's size."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return matmul_peak(device, dtype, n=512 if quick else None)


def flop_params(cfg) -> int:
    """N in the FLOP formula: every parameter but the ``n_ctx`` position rows of ``we``
    (a position lookup is not a matmul; the token rows are, through the tied LM head)."""
    e, L = cfg.n_embd, cfg.n_layer
    per_layer = e * 3 * e + 3 * e + e * e + e + 2 * e + e * 4 * e + 4 * e + 4 * e * e + e + 2 * e
    return (cfg.n_vocab + cfg.n_special) * e + L * per_layer + e + 1


def train_flops(cfg, tokens: int) -> int:
    """Model FLOPs of one training step over ``tokens`` tokens (padding included):

        6 * N * T  +  12 * n_layer * T_ctx * n_embd * T

    6 N T: forward (2 FLOP a multiply-add) plus backward (twice the forward) through every weight
    matrix, the tied LM head included; 12 L T_ctx E T: the attention scores and their weighted sum.
    """
    return 6 * flop_params(cfg) * tokens + 12 * cfg.n_layer * cfg.n_ctx * cfg.n_embd * tokens


def train_flops_real(cfg, lengths) -> int:
    """:func:`train_flops` of the real tokens only: ``6 N n_real + 12 n_layer n_embd sum(L_i^2)``
    over sequences of real lengths ``L_i`` (each token attends to its own sequence's tokens, not
    the padded ``T_ctx``). A padding-free step does this work (plus attention over the padded
    layout); reporting MFU against it as well keeps a step from looking faster by formula alone."""
    lengths = [int(n) for n in lengths]
    return 6 * flop_params(cfg) * sum(lengths) + 12 * cfg.n_layer * cfg.n_embd * sum(n * n for n in lengths)


def forward_flops(cfg, tokens: int, *, lm_head: bool = True) -> int:
    """A forward pass: one third of ``train_flops``. ``lm_head=False`` (multiple-choice scoring)
    leaves out the ``2 * (n_vocab + n_special) * n_embd * T`` of the tied LM head, work the task
    does not need, so MFU is not flattered by skipping it."""
    flops = train_flops(cfg, tokens) // 3
    if not lm_head:
        flops -= 2 * (cfg.n_vocab + cfg.n_special) * cfg.n_embd * tokens
    return flops


def forward_flops_real(cfg, lengths, *, lm_head: bool = True) -> int:
    """:func:`forward_flops` of the real tokens only (see :func:`train_flops_real`)."""
    flops = train_flops_real(cfg, lengths) // 3
    if not lm_head:
        flops -= 2 * (cfg.n_vocab + cfg.n_special) * cfg.n_embd * sum(int(n) for n in lengths)
    return flops


def mfu(flop: int, seconds: float, peak_flops_per_s: float) -> float:
    return flop / seconds / peak_flops_per_s


# ---------------------------------------------------------------------------------------------
# Memory


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's peak resident set size since start or the last ``reset_peak_rss``:
    VmHWM from /proc, else ``ru_maxrss`` (KiB on Linux, not resettable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def with_machine_and_date(result: dict, device, started: float) -> dict:
    """``result`` with the machine it ran on and its start (a ``time.time()``) as a UTC minute."""
    result["machine"] = machine_info(device)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    return result


def child_env(root: Path = REPO_ROOT) -> dict[str, str]:
    """This environment with the checkout ``root`` (default: this one) first on ``PYTHONPATH``,
    for ``python -m benchmarks.*``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_json_subprocess(module: str, args: list[str], *, timeout: float = 1800) -> dict:
    """Run ``python -m module args`` in a fresh interpreter; its last stdout line is a JSON dict."""
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# What ran where


def package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    device = torch.device(device)
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": package_version("transformers"),
            "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_kind(device) -> str:
    """A short file-name-safe tag for the machine: GPU name on CUDA, ``cpu{cores}`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for tag in ("h200", "h100", "a100", "l4", "a10", "t4", "v100", "k80", "4090", "3090"):
            if tag in name:
                return tag
        return "".join(c if c.isalnum() else "-" for c in name)[:24]
    return f"cpu{os.cpu_count()}"
