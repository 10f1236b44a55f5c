#!/usr/bin/env bash
# Prepare one node of a CheXNet swarm (run it on every node, managers and workers, for every version):
# verify the offline package's tarball with the vendor's key (in a private copy, as install.sh does),
# docker load its images, and print this node's line for the cluster's node list:
# '<node hostname> <product_uuid>' (the only line on stdout).
#
# Usage: sudo scripts/swarm-node.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX)
#            [--package chexnet-offline-<version>-<variant>.tar.gz] [--uuid-file /sys/class/dmi/id/product_uuid]
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
UUID_FILE=/sys/class/dmi/id/product_uuid
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    --package) PACKAGE_FILE="$2"; shift 2 ;;
    --uuid-file) UUID_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
# Verified first, everywhere: nothing of the package runs before its tarball's signature is checked.
trap remove_staging EXIT
stage_package "$(cd "${HERE}/.." && pwd)" "${PACKAGE_FILE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
PACKAGE="${STAGED}"
# Then the identity: a node without one is told so before minutes of loading.
uuid="$(bash "${PACKAGE}/scripts/product-uuid.sh" "${UUID_FILE}")"
# The name Swarm gives this node ({{.Node.Hostname}} in the stack), as the API task will look it up.
node="$(docker info --format '{{.Name}}')" || die "Docker is not running on this node."
load_images "${PACKAGE}"
log "node ${node} is ready for CheXNet $(package_value VERSION '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$'); its line for the cluster's node list:"
printf '%s %s\n' "${node}" "${uuid}"
