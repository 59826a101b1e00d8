#!/usr/bin/env bash
# The CUDA checks, as one call of the device tool on a lent GPU machine.
#
# That machine's image has torch, transformers, triton and pytest but not optree or ftfy, and it
# cannot download, so their wheels travel with the call. Here, where PyPI answers, first:
#     bash benchmarks/gpu_wheels.sh              # -> .whl/ (git-ignored)
# then: device run, command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 480.
#
# Parts, run in this order (PARTS, a space-separated list, chooses among them):
#   tests     the CUDA tests (-k cuda): the compiled step equals eager, the bf16 step with CUDA
#             graphs trains, padding-free equals padded, the CUDA-graph decode step equals eager;
#   train     bench_train on cuda: the compiled bf16-autocast train step (fp32 params and moments,
#             torch.compile mode $COMPILE_MODE, default reduce-overhead: CUDA graphs without the
#             GEMM autotuning that would not fit the time; 32 stories a step, the paper's update)
#             against transformers' eager bf16 step, gpt1f's eager step as a third side; MFU
#             against the measured bf16 matmul peak (padded and real-token FLOPs), the step time
#             of the 138-update ROCStories fine-tune (target < 30 s), each side's peak GPU memory;
#   packed    the same with the padding-free path forced on (compile mode default: CUDA graphs
#             do not take a changing number of real tokens), to set the CUDA default from a number;
#   generate  new tokens/s, eager and CUDA-graph decode, against transformers' generate;
#   optim     the optimizer update alone against AdamW.
# Each part gets the smaller of its own limit (TESTS_S 150, TRAIN_S 270, PACKED_S 180, GENERATE_S
# 150, OPTIM_S 90) and what is left of BUDGET_S (default 420 s), and is skipped, saying so, with
# less than MIN_PART_S (30 s) left: the call ends inside the tool's limit, and a second call with
# PARTS set runs what the first skipped or lost.
#
# What comes back under $OUT (the device tool's folder; else /tmp/gpu_check), 8 files at most:
# gpu_check.log (all output), gpu_check_{train,packed,generate,optim}.json (each benchmark's own
# JSON), and benchmarks.run's report of train, generate and optim (.json, .md, .png).
#
# DEVICE=cpu QUICK=1 runs the same plumbing on the CPU with tiny configs: a dry run of this script.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-${TMPDIR:-/tmp}/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
QUICK_FLAG=$([ -n "${QUICK:-}" ] && echo --quick)
BUDGET_S="${BUDGET_S:-420}"
MIN_PART_S="${MIN_PART_S:-30}"
START=$SECONDS

# run_part NAME LIMIT_S STDOUT_FILE CMD...: CMD under the smaller of LIMIT_S and the budget left;
# its outcome goes to the caller's SUMMARY and status.
run_part() {
    local name=$1 limit=$2 out=$3 left t0 rc
    shift 3
    case " ${PARTS:-tests train packed generate optim} " in *" $name "*) ;; *) return ;; esac
    left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt "$MIN_PART_S" ]; then
        SUMMARY+=("$name: skipped, ${left} s of the budget left")
        status=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit} s)"
    t0=$SECONDS
    if [ "$out" = - ]; then timeout "$limit" "$@"; else timeout "$limit" "$@" > "$out"; fi
    rc=$?
    SUMMARY+=("$name: rc $rc in $((SECONDS - t0)) s$([ "$rc" -eq 124 ] && echo ", stopped at its limit")")
    [ "$rc" -eq 0 ] || status=1
}

main() {
    local status=0 SUMMARY=()
    # packages the image lacks, carried as wheels (benchmarks/gpu_wheels.sh)
    if ! "$PY" -c "import optree, ftfy" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpt1f_site .whl/*.whl; then
            export PYTHONPATH="/tmp/gpt1f_site${PYTHONPATH:+:$PYTHONPATH}"
        fi
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

    echo "== versions"
    "$PY" - "$DEVICE" <<'EOF' || { echo "gpt1f does not import: carry .whl (bash benchmarks/gpu_wheels.sh here)"; exit 2; }
import importlib.metadata as md, platform, sys, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("transformers", "triton", "numpy", "pytest", "optree", "ftfy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device")
import gpt1f  # noqa: F401  (fails here, not in every part, when a package is missing)
EOF

    local -a BENCH=(--device "$DEVICE" $QUICK_FLAG)
    run_part tests "${TESTS_S:-150}" - "$PY" -m pytest -q -x -p no:cacheprovider -k cuda \
        tests/test_benchmarks.py tests/test_generation.py tests/test_packing.py tests/test_regional.py \
        tests/test_compile_modes.py
    run_part train "${TRAIN_S:-270}" "$OUT_DIR/gpu_check_train.json" "$PY" -m benchmarks.bench_train \
        "${BENCH[@]}" --eager-side --compile-mode "${COMPILE_MODE:-reduce-overhead}" --steps "${STEPS:-10}" --warmup 3
    run_part packed "${PACKED_S:-180}" "$OUT_DIR/gpu_check_packed.json" "$PY" -m benchmarks.bench_train \
        "${BENCH[@]}" --packed --compile-mode default --steps "${STEPS:-10}" --warmup 3
    run_part generate "${GENERATE_S:-150}" "$OUT_DIR/gpu_check_generate.json" "$PY" -m benchmarks.bench_generate \
        "${BENCH[@]}" --peer_new_tokens "${PEER_NEW_TOKENS:-64}"
    run_part optim "${OPTIM_S:-90}" "$OUT_DIR/gpu_check_optim.json" "$PY" -m benchmarks.bench_optim "${BENCH[@]}"

    echo "== report"
    "$PY" -m benchmarks.gpu_report "$OUT_DIR" $QUICK_FLAG --device "$DEVICE" || status=1
    printf '%s\n' "${SUMMARY[@]}"
    echo "wall $((SECONDS - START)) s of a ${BUDGET_S} s budget, status $status"
    return $status
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
