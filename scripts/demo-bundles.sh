#!/usr/bin/env bash
# Demo bundles (untrained, seeded weights) with the validated OpenVINO variants this machine can make:
# int8 always, bf16 on a CPU with AMX or AVX512-BF16, both measured on the calibration images.
# A variant beyond its bound stops 'bundle demo' (DESIGN.md "CPU engines and precision"); the bundle
# is then made without that variant, and this says so.
# Usage: scripts/demo-bundles.sh OUT_DIR NAME...   (NAME: cxr10, cxr25, chestxray14; existing ones are kept)
# Env:   CALIBRATION=DIR (default ../shared/data/nih; without it no variants), PYTHON
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors
(( $# >= 2 )) || die "usage: $0 OUT_DIR NAME..."
OUT="$1"
shift
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
CALIBRATION="${CALIBRATION:-${ROOT}/../shared/data/nih}"

precisions=()
if [[ -d "${CALIBRATION}" ]]; then
  grep -qw -e amx_bf16 -e avx512_bf16 /proc/cpuinfo && precisions+=(bf16)
  precisions+=(int8)
else
  log "no calibration images at ${CALIBRATION}: demo bundles without bf16/int8 variants"
fi

demo() {  # NAME PRECISION...
  local name="$1" flags=() p
  shift
  for p in "$@"; do flags+=(--precision "${p}"); done
  (( ${#flags[@]} )) && flags+=(--calibration "${CALIBRATION}")
  rm -rf "${OUT:?}/${name}"
  "${PYTHON}" -m chexnet bundle demo --labels "${name}" --out "${OUT}/${name}" "${flags[@]}"
}

for name in "$@"; do
  [[ -f "${OUT}/${name}/manifest.json" ]] && continue
  log "demo bundle ${name} (variants: ${precisions[*]:-none})"
  wanted=("${precisions[@]}")
  # Drop the last variant (int8, the one quantization may push past the bound) until the build passes.
  until demo "${name}" "${wanted[@]}"; do
    (( ${#wanted[@]} )) || die "bundle demo ${name} failed without variants"
    log "demo bundle ${name}: the ${wanted[-1]} variant is beyond its bound; building it without"
    unset 'wanted[-1]'
  done
done
