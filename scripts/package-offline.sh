#!/usr/bin/env bash
# Pack what a field engineer carries: dist/chexnet-offline-<version>-<variant>.tar.gz holding the
# docker-saved images, the deployment template, the scripts, the docs, the licence public key, the
# package-signing certificate, SHA256SUMS and the vendor's signature over it; and beside it
# <tarball>.sig, the vendor's signature over the whole tarball, and vendor_package.crt (for a site that
# was sent only its fingerprint). Signatures are RSA-PSS/SHA-256 with the package-signing key (python -m
# licensing package-keygen). The contents are the explicit list below, owned by root (0:0), not writable
# by group or others, and a signed SEQUENCE: installers refuse a package older than the one installed.
# Usage: package-offline.sh --signing-key package_signing.key --license-key vendor_public.pem
#                           [--signing-cert vendor_package.crt] [--variant cpu|gpu] [--version V]
#                           [--sequence N]
#        --version packs images tagged V (default: the project version).
#        --sequence: a whole number greater than every earlier package's (default: the time now, in
#        seconds since 1970, which grows from build to build).
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
# shellcheck source=package-trust.sh
source "${ROOT}/scripts/package-trust.sh"
trap_errors

VARIANT=cpu
SIGNING_KEY=""
SIGNING_CERT=""
LICENSE_KEY=""
VERSION="$(project_version "${ROOT}")"
SEQUENCE="$(date -u +%s)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) VARIANT="$2"; shift 2 ;;
    --signing-key) SIGNING_KEY="$2"; shift 2 ;;
    --signing-cert) SIGNING_CERT="$2"; shift 2 ;;
    --license-key) LICENSE_KEY="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --sequence) SEQUENCE="$2"; shift 2 ;;
    *) die "unknown option $1 (see the usage at the top of $0)" ;;
  esac
done
[[ "${VARIANT}" == cpu || "${VARIANT}" == gpu ]] || die "--variant must be cpu or gpu."
[[ -f "${SIGNING_KEY}" ]] || die "--signing-key must name the package-signing key (python -m licensing package-keygen)."
[[ "$(stat -c %a "${SIGNING_KEY}")" == 600 ]] || die "${SIGNING_KEY} must be mode 600 (chmod 600 ${SIGNING_KEY})."
SIGNING_CERT="${SIGNING_CERT:-$(dirname "${SIGNING_KEY}")/vendor_package.crt}"
[[ -f "${SIGNING_CERT}" ]] || die "--signing-cert ${SIGNING_CERT} does not exist (package-keygen writes it beside the key)."
[[ -f "${LICENSE_KEY}" ]] || die "--license-key must name the vendor's Ed25519 licence public key (vendor_public.pem)."
[[ "${VERSION}" =~ ^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$ ]] || die "--version must be a plain version string."
[[ "${SEQUENCE}" =~ ^[1-9][0-9]{0,17}$ ]] || die "--sequence must be a whole number from 1 up (at most 18 digits), greater than every earlier package's."

NAME="chexnet-offline-${VERSION}-${VARIANT}"
STAGE="${ROOT}/dist/${NAME}"
IMAGES=("chexnet-api-${VARIANT}:${VERSION}" "chexnet-nginx:${VERSION}")
for image in "${IMAGES[@]}"; do
  docker image inspect "${image}" >/dev/null 2>&1 || die "image ${image} is missing; run scripts/build-images.sh ${VARIANT} first."
done

log "staging ${STAGE}"
rm -rf "${STAGE}"
mkdir -p "${STAGE}"/{images,scripts,docs,prometheus,license/keys}
install -m 755 "${ROOT}"/deployment_template/install.sh "${ROOT}"/deployment_template/install.ps1 "${STAGE}/"
install -m 644 "${ROOT}"/deployment_template/{docker-compose.yml,docker-compose.gpu.yml,docker-stack.yml,docker-stack.gpu.yml,docker-stack.ports.yml,.env.example,README.md} "${STAGE}/"
install -m 755 "${ROOT}"/scripts/{preflight.sh,load-images.sh,product-uuid.sh,swarm-node.sh,swarm-deploy.sh} "${STAGE}/scripts/"
install -m 644 "${ROOT}"/scripts/{lib.sh,package-trust.sh,versions.env,preflight.ps1,load-images.ps1,package-trust.ps1,product-uuid.ps1} "${STAGE}/scripts/"
install -m 644 "${ROOT}"/README.md "${ROOT}"/BENCHMARKS.md "${STAGE}/docs/"
install -m 644 "${ROOT}"/deployment_template/prometheus/chexnet-alerts.yml "${STAGE}/prometheus/"  # for sites that run Prometheus
install -m 644 "${SIGNING_CERT}" "${STAGE}/vendor_package.crt"
# The API trusts a directory of <kid>.pem (key rotation); kid = sha256 of the raw public key, 16 hex.
KID="$(openssl pkey -pubin -in "${LICENSE_KEY}" -outform DER | tail -c 32 | sha256sum | cut -c1-16)"
openssl pkey -pubin -in "${LICENSE_KEY}" -out "${STAGE}/license/keys/${KID}.pem"
echo "${VERSION}" > "${STAGE}/VERSION"
echo "${VARIANT}" > "${STAGE}/VARIANT"
echo "${SEQUENCE}" > "${STAGE}/SEQUENCE"

log "docker save ${IMAGES[*]} (compressing)"
docker save "${IMAGES[@]}" | pigz -6 > "${STAGE}/images/chexnet-${VERSION}-${VARIANT}.tar.gz"

log "SHA256SUMS and the vendor's signatures (RSA-PSS, SHA-256)"
(cd "${STAGE}" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > ../SHA256SUMS.tmp && mv ../SHA256SUMS.tmp SHA256SUMS)
openssl dgst "${PSS_OPTS[@]}" -sign "${SIGNING_KEY}" -out "${STAGE}/SHA256SUMS.sig" "${STAGE}/SHA256SUMS"
verify_signature "${SIGNING_CERT}" "${STAGE}/SHA256SUMS" "${STAGE}/SHA256SUMS.sig" \
  || die "--signing-cert does not belong to --signing-key."

# Root's, whoever packs it: unpacked as root, no build account owns the scripts root runs.
tar -C "${ROOT}/dist" --owner=0 --group=0 --numeric-owner --mode=go-w --sort=name -cf - "${NAME}" | pigz -1 > "${ROOT}/dist/${NAME}.tar.gz"
rm -rf "${STAGE}"
openssl dgst "${PSS_OPTS[@]}" -sign "${SIGNING_KEY}" -out "${ROOT}/dist/${NAME}.tar.gz.sig" "${ROOT}/dist/${NAME}.tar.gz"
rm -f "${ROOT}/dist/${NAME}.tar.gz.sha256"
[[ "${SIGNING_CERT}" -ef "${ROOT}/dist/vendor_package.crt" ]] || install -m 644 "${SIGNING_CERT}" "${ROOT}/dist/vendor_package.crt"
log "wrote dist/${NAME}.tar.gz ($(du -h "${ROOT}/dist/${NAME}.tar.gz" | cut -f1), sequence ${SEQUENCE}), its signature ${NAME}.tar.gz.sig and vendor_package.crt"
log "ship to the site, out of band: $(basename "${SIGNING_CERT}") (fingerprint $(cert_fingerprint "${SIGNING_CERT}"))"
