#!/usr/bin/env bash
# Verify the offline package's tarball against the vendor's key given out of band (in a private copy:
# the tarball's signature, then the signature over SHA256SUMS, no unlisted file, every checksum), then
# docker load the images it lists. install.sh and swarm-node.sh do this themselves.
# Usage: sudo scripts/load-images.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX)
#            [--package chexnet-offline-<version>-<variant>.tar.gz (default: the one beside this package)]
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
# shellcheck source=package-trust.sh
source "${HERE}/package-trust.sh"
trap_errors

VENDOR_KEY=""
VENDOR_FINGERPRINT=""
PACKAGE_FILE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    --package) PACKAGE_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
trap remove_staging EXIT
stage_package "$(cd "${HERE}/.." && pwd)" "${PACKAGE_FILE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
load_images "${STAGED}"
