#!/usr/bin/env bash
# Vendor the browser pages' JavaScript (requirements/js-packages.txt) into chexnet/api/vendor/ at build time:
# each pinned tarball is fetched with `npm pack` into build/vendor-js/ (kept there as a cache; a tarball put
# there by hand is used without a network), checked against its sha512 integrity and licence, and the one
# file the pages load is copied out with the package's licence text. Run by make (test, up) and
# scripts/build-images.sh before the wheel is built; the service never fetches anything at run time.
# Usage: scripts/vendor-js.sh            Env: NPM=npm (the npm client; its registry settings apply);
#        VENDOR_JS_LIST, VENDOR_JS_CACHE, VENDOR_JS_OUT (the list, the tarball cache, the output folder: tests)
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

LIST="${VENDOR_JS_LIST:-${ROOT}/requirements/js-packages.txt}"
CACHE="${VENDOR_JS_CACHE:-${ROOT}/build/vendor-js}"
OUT="${VENDOR_JS_OUT:-${ROOT}/chexnet/api/vendor}"
NPM="${NPM:-npm}"
mkdir -p "${CACHE}" "${OUT}"

integrity_of() {  # the npm-style sha512 integrity of a file
  printf 'sha512-%s' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"
}

vendor() {
  local name="$1" version="$2" integrity="$3" file="$4" licence="$5"
  local tarball="${CACHE}/${name//\//-}-${version}.tgz" target="${OUT}/${file##*/}" stamp
  stamp="${OUT}/.${file##*/}.integrity"
  if [[ -f "${target}" && -f "${stamp}" && "$(cat "${stamp}")" == "${integrity}" ]]; then
    return 0
  fi
  if [[ ! -f "${tarball}" || "$(integrity_of "${tarball}")" != "${integrity}" ]]; then
    command -v "${NPM}" >/dev/null || die "npm is not installed (apt-get install npm) and ${tarball} is not there; one of them is needed to vendor ${name} ${version}."
    log "npm pack ${name}@${version}"
    local work
    work="$(mktemp -d "${CACHE}/pack.XXXXXX")"
    (cd "${work}" && "${NPM}" pack --silent "${name}@${version}" >/dev/null) \
      || { rm -rf "${work}"; die "npm could not fetch ${name}@${version} (check the npm registry or mirror configured for this build host)."; }
    mv "${work}"/*.tgz "${tarball}"
    rm -rf "${work}"
  fi
  [[ "$(integrity_of "${tarball}")" == "${integrity}" ]] \
    || die "${tarball} does not match the pinned integrity of ${name} ${version} in ${LIST}; delete it and run again, or check the registry."
  local found
  found="$(tar -xzOf "${tarball}" package/package.json | "${PYTHON:-python3}" -c 'import json, sys; print(json.load(sys.stdin).get("license", ""))')"
  [[ "${found}" == "${licence}" ]] || die "${name} ${version} declares licence '${found}', not the ${licence} pinned in ${LIST}."
  tar -xzOf "${tarball}" "package/${file}" >"${target}.tmp"
  tar -xzOf "${tarball}" package/LICENSE.md >"${OUT}/${name//\//-}.LICENSE.md" 2>/dev/null \
    || tar -xzOf "${tarball}" package/LICENSE >"${OUT}/${name//\//-}.LICENSE.md"
  mv "${target}.tmp" "${target}"
  printf '%s' "${integrity}" >"${stamp}"
  log "vendored ${name} ${version} (${licence}) → ${target}"
}

while read -r name version integrity file licence rest; do
  [[ -z "${name}" || "${name}" == \#* ]] && continue
  [[ -n "${licence}" && -z "${rest}" ]] || die "${LIST}: the line for '${name}' needs name, version, integrity, file and licence."
  vendor "${name}" "${version}" "${integrity}" "${file}" "${licence}"
done <"${LIST}"
