#!/usr/bin/env bash
# Verify the offline package (SHA256SUMS and the vendor's signature over it), then docker load its images.
# Usage: load-images.sh [PACKAGE_DIR]      (default: the folder above this script)
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
trap_errors

PACKAGE="$(cd "${1:-${HERE}/..}" && pwd)"
cd "${PACKAGE}"
[[ -f SHA256SUMS ]] || die "${PACKAGE} has no SHA256SUMS; is this an unpacked chexnet-offline package?"

log "verifying checksums in ${PACKAGE}"
sha256sum --quiet --strict -c SHA256SUMS || die "a file of the package is damaged or missing (SHA256SUMS); copy the package again."

key="$(find license/keys -name '*.pem' 2>/dev/null | head -n 1)"
if [[ -f SHA256SUMS.sig && -n "${key}" ]]; then
  openssl pkeyutl -verify -pubin -inkey "${key}" -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig >/dev/null 2>&1 \
    || die "the vendor signature over SHA256SUMS does not verify with ${key}; do not install this package."
  # The same fingerprint as the licence kid: sha256 of the raw 32-byte Ed25519 key.
  fingerprint="$(openssl pkey -pubin -in "${key}" -outform DER | tail -c 32 | sha256sum | cut -c1-16)"
  log "vendor signature OK (key ${key##*/}, fingerprint ${fingerprint}: compare with the one the vendor sent you)"
else
  die "the package has no vendor signature (SHA256SUMS.sig) or no public key in license/keys."
fi

for archive in images/*.tar.gz; do
  log "docker load ${archive}"
  docker load -i "${archive}" | sed 's/^/    /' >&2 || die "docker load ${archive} failed."
done
