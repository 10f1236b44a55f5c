#!/usr/bin/env bash
# Prepare one node of a CheXNet swarm (run it on every node, managers and workers, for every version):
# verify the unpacked offline package with the vendor's key, docker load its images, and print this
# node's line for the cluster's node list: '<node hostname> <product_uuid>' (the only line on stdout).
#
# Usage: sudo scripts/swarm-node.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX)
#            [--uuid-file /sys/class/dmi/id/product_uuid]
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGE="$(cd "${HERE}/.." && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
# shellcheck source=package-trust.sh
source "${HERE}/package-trust.sh"
trap_errors

VENDOR_KEY=""
VENDOR_FINGERPRINT=""
UUID_FILE=/sys/class/dmi/id/product_uuid
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    --uuid-file) UUID_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
# Read first: a node without an identity is told so before minutes of loading.
uuid="$("${HERE}/product-uuid.sh" "${UUID_FILE}")"
vendor_cert "${PACKAGE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
verify_package "${PACKAGE}" "${VENDOR_CERT}"
# The name Swarm gives this node ({{.Node.Hostname}} in the stack), as the API task will look it up.
node="$(docker info --format '{{.Name}}')" || die "Docker is not running on this node."
load_images "${PACKAGE}"
log "node ${node} is ready for CheXNet $(cat "${PACKAGE}/VERSION"); its line for the cluster's node list:"
printf '%s %s\n' "${node}" "${uuid}"
