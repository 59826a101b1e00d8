#!/usr/bin/env bash
# CUDA checks for a lent GPU machine, ~6 minutes on one H100:
#   1. versions and the GPU;
#   2. the CUDA tests of tests/test_benchmarks.py (compiled step == eager, bf16 + CUDA graphs);
#   3. the training-step and eval benchmark on CUDA (bf16 autocast, fp32 params and moments,
#      torch.compile mode $COMPILE_MODE, default reduce-overhead = CUDA graphs without GEMM
#      autotuning, which would not fit the time; 32 stories a step: the paper's update) against
#      transformers' eager bf16-autocast step when transformers is installed;
#   4. the optimizer benchmark on CUDA;
#   5. generation on CUDA: the CUDA-graph decode step against eager (tests/test_generation.py)
#      and new tokens/s against transformers' generate (benchmarks/bench_generate.py).
# Results go to $OUT when set (the device tool's output folder), else benchmarks/results.
#
#     bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

echo "== versions"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/gpu_check_versions.txt"
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("transformers", "triton", "numpy", "pytest"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
    echo "== tests: the compiled CUDA step equals eager, bf16 + CUDA graphs train, bf16 eval"
    timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_benchmarks.py \
        -k "cuda or flop or interleaved or ratio" tests/test_generation.py 2>&1 | tail -15 | tee "$OUT_DIR/gpu_check_pytest.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
    echo "== tests skipped: pytest not installed"
fi

if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "== no CUDA device: benchmarks skipped"
    exit 1
fi

# One invocation per benchmark, each with its own limit, so a slow compile loses only its own row.
echo "== train step + eval forward on cuda (compile mode ${COMPILE_MODE:-reduce-overhead})"
timeout "${TRAIN_TIMEOUT:-330}" "$PY" -m benchmarks.run --device cuda --only train \
    --compile-mode "${COMPILE_MODE:-reduce-overhead}" --steps "${STEPS:-10}" --warmup 3 \
    --out-dir "$OUT_DIR" 2>&1 | grep -v "^[EW][0-9]" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== optimizer update on cuda"
timeout "${OPTIM_TIMEOUT:-90}" "$PY" -m benchmarks.run --device cuda --only optim \
    --out-dir "$OUT_DIR" 2>&1 | grep -v "^[EW][0-9]" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== generation on cuda (gpt1f eager and CUDA graphs vs transformers' generate)"
timeout "${GENERATE_TIMEOUT:-240}" "$PY" -m benchmarks.run --device cuda --only generate \
    --peer_new_tokens "${PEER_NEW_TOKENS:-64}" --out-dir "$OUT_DIR" 2>&1 | grep -v "^[EW][0-9]" | tail -14
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
