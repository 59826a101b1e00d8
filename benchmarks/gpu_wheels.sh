#!/usr/bin/env bash
# Wheels of what gpt1f imports and the lent GPU machine's image lacks (optree; ftfy and its
# wcwidth), for that image's Python (3.12, x86-64), into .whl/ (git-ignored), at the versions
# installed here. Run it here, where PyPI answers, before a device call that carries .whl:
# benchmarks/gpu_check.sh installs them there.
#
#     bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pins=$("$PY" - <<'PYEOF'
import importlib.metadata as md
print(" ".join(f"{name}=={md.version(name)}" for name in ("optree", "ftfy", "wcwidth")))
PYEOF
)
rm -rf .whl
mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" \
    --implementation cp "${platforms[@]}" -d .whl $pins
ls -l .whl
