#!/usr/bin/env bash
# The GPU path in one command (`make gpu-check`): the test suite's CUDA tests (marker `cuda`), the
# speed scripts with --device cuda, then the standard preset (and, with 2+ GPUs, the same preset on
# every GPU through torchrun), all numbers written to docs/gpu-check.md (below its marker line) with the GPU named.
# Without CUDA the CUDA tests skip, the script says so and writes nothing (CI runs this path).
#
# Environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_OUT (default
# docs/gpu-check.md); GPU_CHECK_TESTS (test paths, default tests); GPU_CHECK_RESULTS (default
# results/gpu-check); GPU_CHECK_PRESET (default standard).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-docs/gpu-check.md}
RESULTS=${GPU_CHECK_RESULTS:-results/gpu-check}
PRESET=${GPU_CHECK_PRESET:-standard}
# shellcheck disable=SC2086  # GPU_CHECK_TESTS may name several paths
"$PY" -m pytest -q -m cuda -p no:cacheprovider ${GPU_CHECK_TESTS:-tests}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device: the CUDA tests were skipped; no benchmark ran and $OUT is unchanged"
    exit 0
fi

GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
COUNT=$("$PY" -c "import torch; print(torch.cuda.device_count())")
TMP=$(mktemp "${OUT}.XXXXXX")
trap 'rm -f "$TMP"' EXIT

section() {  # section TITLE COMMAND...: run it, put its output in the report as a code block
    local title=$1
    shift
    echo "gpu_check: $title"
    {
        printf '\n## %s\n\n`%s`\n\n```\n' "$title" "$*"
        "$@" 2>&1
        printf '```\n'
    } >> "$TMP"
}

# The procedure and targets above the marker line stay; the results replace what is below it.
MARK='<!-- benchmarks/gpu_check.sh replaces everything below this line -->'
if [ -f "$OUT" ] && grep -qxF "$MARK" "$OUT"; then
    awk -v mark="$MARK" '{ print } $0 == mark { exit }' "$OUT" > "$TMP"
else
    printf '# GPU check\n\n%s\n' "$MARK" > "$TMP"
fi
{
    echo
    echo "## $GPU"
    echo
    echo "Written by benchmarks/gpu_check.sh on $(date -u +%Y-%m-%dT%H:%MZ): $COUNT x $GPU," \
         "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')," \
         "camzoo $("$PY" -c 'import camzoo; print(camzoo.__version__)'). The CUDA tests passed."
} >> "$TMP"

section "Explaining (benchmarks/explain_speed.py)" "$PY" benchmarks/explain_speed.py --device cuda --batch 64
section "Metrics (benchmarks/metric_speed.py)" "$PY" benchmarks/metric_speed.py --device cuda --images 64 --batch 256
section "Training (benchmarks/train_speed.py)" "$PY" benchmarks/train_speed.py --device cuda

bench() {  # bench NPROC DIR: the preset's wall-clock minutes
    local start=$SECONDS
    "$PY" -m camzoo bench --preset "$PRESET" --device cuda --out "$2" --no-progress --no-html --nproc "$1" >&2
    echo $(( (SECONDS - start + 30) / 60 ))
}
ONE=$(bench 1 "$RESULTS/one-gpu")
{
    printf '\n## The %s preset on one GPU\n\n%s min wall-clock (target: <= 20 min); tables below.\n\n' "$PRESET" "$ONE"
    sed -n '/^### /,$p' "$RESULTS/one-gpu/summary.md"
} >> "$TMP"
if [ "$COUNT" -ge 2 ]; then
    ALL=$(bench "$COUNT" "$RESULTS/all-gpus")
    printf '\n## The %s preset on %s GPUs (torchrun)\n\n%s min wall-clock; one GPU: %s min.\n' \
        "$PRESET" "$COUNT" "$ALL" "$ONE" >> "$TMP"
fi
mv "$TMP" "$OUT"
trap - EXIT
echo "gpu_check: wrote $OUT"
