#!/usr/bin/env bash
# CUDA checks for a lent GPU machine, ~9 minutes on one H100:
#   1. versions and the GPU;
#   2. the CUDA tests of tests/test_benchmarks.py (compiled step == eager, bf16 + CUDA graphs) and
#      of tests/test_packing.py / tests/test_regional.py (padding-free == padded, regional compile);
#   3. the training-step and eval benchmark on CUDA (bf16 autocast, fp32 params and moments,
#      torch.compile mode $COMPILE_MODE, default reduce-overhead = CUDA graphs without GEMM
#      autotuning, which would not fit the time; 32 stories a step: the paper's update) against
#      transformers' eager bf16-autocast step when transformers is installed, with gpt1f's eager
#      step as a third side; the result holds the MFU against the measured bf16 matmul peak (padded
#      and real-token FLOPs), the 138-update ROCStories fine-tune's step time (target < 30 s:
#      train.rocstories_run_s, and finetune_estimate with compile time), each side's peak GPU memory;
#   3b. the same with gpt1f's padding-free path forced on (--packed, mode default: CUDA graphs
#      do not take a changing number of real tokens), to set the CUDA default from a number;
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
    timeout "${TEST_TIMEOUT:-210}" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_benchmarks.py \
        -k "cuda or flop or interleaved or ratio" tests/test_generation.py tests/test_packing.py \
        tests/test_regional.py 2>&1 | tail -15 | tee "$OUT_DIR/gpu_check_pytest.txt"
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
timeout "${TRAIN_TIMEOUT:-360}" "$PY" -m benchmarks.bench_train --device cuda --eager-side \
    --compile-mode "${COMPILE_MODE:-reduce-overhead}" --steps "${STEPS:-10}" --warmup 3 \
    > "$OUT_DIR/gpu_check_train.json" 2> "$OUT_DIR/gpu_check_train.err" || status=1
"$PY" - "$OUT_DIR/gpu_check_train.json" <<'EOF' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
for part in ("train", "eval"):
    p = r[part]
    for side, s in p["sides"].items():
        print(f"{part} {side}: {s['median_s'] * 1e3:.1f} ms, MFU {s['mfu']:.1%} padded, {s['mfu_real']:.1%} real")
    print(f"{part}: speed-up over transformers {p.get('speedup', {}).get('median')}, "
          f"peak GPU memory {p.get('peak_gpu_memory_bytes')}")
print("138 updates of 32 stories, step time:", r["train"].get("rocstories_run_s"), "(target < 30 s)")
print("with compile time:", r["finetune_estimate"])
EOF

echo "== train step + eval forward on cuda, padding-free (compile mode default)"
timeout "${PACKED_TIMEOUT:-240}" "$PY" -m benchmarks.bench_train --device cuda --packed \
    --compile-mode default --steps "${STEPS:-10}" --warmup 3 \
    > "$OUT_DIR/gpu_check_train_packed.json" 2> "$OUT_DIR/gpu_check_train_packed.err" || status=1
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print({p: {s: round(v['median_s'] * 1e3, 1) for s, v in r[p]['sides'].items()} for p in ('train', 'eval')}, 'ms')" \
    "$OUT_DIR/gpu_check_train_packed.json" || status=1

echo "== optimizer update on cuda"
timeout "${OPTIM_TIMEOUT:-90}" "$PY" -m benchmarks.run --device cuda --only optim \
    --out-dir "$OUT_DIR" 2>&1 | grep -v "^[EW][0-9]" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== generation on cuda (gpt1f eager and CUDA graphs vs transformers' generate)"
timeout "${GENERATE_TIMEOUT:-240}" "$PY" -m benchmarks.run --device cuda --only generate \
    --peer_new_tokens "${PEER_NEW_TOKENS:-64}" --out-dir "$OUT_DIR" 2>&1 | grep -v "^[EW][0-9]" | tail -14
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
