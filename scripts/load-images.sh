#!/usr/bin/env bash
# Verify the unpacked offline package against the vendor's key given out of band (signature over
# SHA256SUMS, no unlisted file, every checksum), then docker load the images it lists.
# Usage: load-images.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX) [PACKAGE_DIR]
#        PACKAGE_DIR defaults to the folder above this script.
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
# shellcheck source=package-trust.sh
source "${HERE}/package-trust.sh"
trap_errors

VENDOR_KEY=""
VENDOR_FINGERPRINT=""
PACKAGE="${HERE}/.."
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) PACKAGE="$1"; shift ;;
  esac
done
PACKAGE="$(cd "${PACKAGE}" && pwd)"
vendor_cert "${PACKAGE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
verify_package "${PACKAGE}" "${VENDOR_CERT}"
load_images "${PACKAGE}"
