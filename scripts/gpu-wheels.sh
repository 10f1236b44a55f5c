#!/usr/bin/env bash
# What bench/gpu_check.py needs on the lent GPU machine that it lacks, prepared here (BENCHMARKS.md "GPU"):
#   1. the cp312 wheels its python3 lacks, pinned by requirements/constraints.txt, into WHEELS (default .whl/).
#      That python3 (3.12) already holds torch (CUDA), torchvision, numpy, onnxruntime (CPU), onnx, opencv,
#      pillow, prometheus-client, requests, werkzeug, jinja2, click, pyyaml, packaging and typing-extensions
#      (/work/.library/device/KINDS.md); the rest of what 'python -m chexnet serve', 'bundle demo' and the
#      OpenVINO engine import is below. OpenVINO's wheel (59 MB) is repacked without what the CPU image also
#      drops (Intel GPU/NPU plugins, GPU tuning cache, non-ONNX model readers);
#   2. sample radiographs (the first COUNT NIH PNGs of ../shared/data/nih) into SAMPLES_OUT (default .gpu-samples/),
#      since ../shared does not travel with the working tree.
# Both folders are ignored by git; the device tool carries them (at most 64 MiB with the working tree: checked).
# Usage: scripts/gpu-wheels.sh        Env: WHEELS, SAMPLES_OUT, COUNT (16), SAMPLES (../shared/data/nih), PYTHON
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors
WHEELS="${WHEELS:-${ROOT}/.whl}"
SAMPLES_OUT="${SAMPLES_OUT:-${ROOT}/.gpu-samples}"
SAMPLES="${SAMPLES:-${ROOT}/../shared/data/nih}"
COUNT="${COUNT:-16}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
LIMIT_MIB=64
MISSING=(annotated-types blinker cffi cryptography Flask highdicom itsdangerous openvino openvino-telemetry
         pydantic pydantic_core pydicom PyJWT swagger-ui-bundle-v2 typing-inspection waitress)

pin() {  # NAME → NAME==VERSION from the constraints (names compared as pip does)
  local wanted line
  wanted="$(tr 'A-Z_.' 'a-z--' <<<"$1")"
  while IFS= read -r line; do
    [[ "$(tr 'A-Z_.' 'a-z--' <<<"${line%%==*}")" == "${wanted}" ]] && { echo "${line}"; return; }
  done < "${ROOT}/requirements/constraints.txt"
  die "$1 is not pinned in requirements/constraints.txt"
}

rm -rf "${WHEELS}" && mkdir -p "${WHEELS}"
pins=()
for name in "${MISSING[@]}"; do pins+=("$(pin "${name}")"); done
log "downloading ${#pins[@]} cp312 wheels into ${WHEELS}"
"${PYTHON}" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "${WHEELS}" "${pins[@]}"
(( $(find "${WHEELS}" -type f -name '*.whl' | wc -l) == ${#pins[@]} )) || die "expected ${#pins[@]} wheels in ${WHEELS}"

log "repacking OpenVINO without its GPU/NPU plugins, tuning cache and non-ONNX readers"
"${PYTHON}" - "${WHEELS}"/openvino-[0-9]*.whl <<'PY'
import re, sys, zipfile
from pathlib import Path

wheel = Path(sys.argv[1])
drop = re.compile(r"openvino/libs/(libopenvino_intel_(gpu|npu)_plugin\.so|cache\.json|"
                  r"libopenvino_(tensorflow|tensorflow_lite|paddle|pytorch|jax|gguf)_frontend\.so\.[0-9]+)$")
kept = wheel.with_suffix(".tmp")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(kept, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    dropped = [i.filename for i in src.infolist() if drop.match(i.filename)]
    for info in src.infolist():
        if info.filename in dropped:
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):  # the RECORD lists only what the wheel holds
            data = "".join(l for l in data.decode().splitlines(True) if l.split(",", 1)[0] not in dropped).encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
if len(dropped) < 9:
    sys.exit(f"expected to drop 9 files from {wheel.name}, found {len(dropped)}: {dropped}")
kept.replace(wheel)
print(f"dropped {len(dropped)} files", file=sys.stderr)
PY

log "copying ${COUNT} sample images into ${SAMPLES_OUT}"
[[ -d "${SAMPLES}" ]] || die "no sample images at ${SAMPLES}"
rm -rf "${SAMPLES_OUT}" && mkdir -p "${SAMPLES_OUT}"
find "${SAMPLES}" -maxdepth 1 -name '*.png' | sort | head -n "${COUNT}" | xargs -I{} cp {} "${SAMPLES_OUT}/"

# What travels: tracked files, untracked files git does not ignore, and the two carried folders.
tree_bytes="$(cd "${ROOT}" && { git ls-files -z; git ls-files -z --others --exclude-standard; } \
  | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')"
carried="$(du -sb "${WHEELS}" "${SAMPLES_OUT}" | awk '{s += $1} END {print s}')"
total_mib="$(( (tree_bytes + carried + 1048575) / 1048576 ))"
log "wheels $(du -sh "${WHEELS}" | cut -f1), samples $(du -sh "${SAMPLES_OUT}" | cut -f1), working tree $(( tree_bytes / 1048576 )) MiB: ${total_mib} MiB of ${LIMIT_MIB}"
(( total_mib <= LIMIT_MIB )) || die "${total_mib} MiB would travel, more than ${LIMIT_MIB}; lower COUNT"
