#!/usr/bin/env bash
# End to end, as CI runs it. The install follows the field guide (deployment_template/README.md) word
# for word: its ```bash blocks are run as written (test/guide.py says the only substitutions), in a
# fresh folder holding only what an engineer carries, into /opt/chexnet (CHEXNET_E2E_DIR to change).
#   1. images (CPU, nginx)                 2. vendor keys; signed offline package
#   3. forged and damaged packages refused before docker load
#   4. the guide's path on a fresh folder (no .env made first) → QA script → faults → the guide's
#      "DICOM node" section with Orthanc (Debian, in a container) as the PACS and storescu as the modality →
#      the guide's audit repository step with rsyslog (Debian, in a container) receiving over TLS
#   5. the guide's "custom .env" path → its site calibration (calibrate in the installed image, install with
#      --site-thresholds) → upgrade to a second version → a broken third version rolled back;
#      5b. the guide's "Regional centre" on three Swarm nodes (three Docker daemons here) under load: a crashed
#          task, a node lost and back, both upgrades, a fourth node not in the token (test/e2e_three_nodes.sh)
#   6. the GPU image, built only now (7 GB: the disk is emptiest once the installs are gone), on the CPU, and what
#      a GPU host needs of it (arch list, libraries, driver label);
#      always: tear everything down
# Needs Docker running, root, dcmtk, dicom3tools and ../shared/data. Ports on 127.0.0.1: 18443 (HTTPS),
# 18080 (HTTP), 11112 (the DICOM node), 14242 and 18042 (Orthanc's DICOM and REST); step 5b's nodes publish 18443 and
# 18080 on their own addresses, 10.231.0.11-14, inside their network namespaces.
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../scripts/lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

PYTHON="${ROOT}/.venv/bin/python"
SAMPLES="$(cd "${ROOT}/../shared/data" && pwd)"
VERSION="$(project_version "${ROOT}")"
V2="${VERSION}-e2e.2"
V3="${VERSION}-e2e.3-broken"
DIR="${CHEXNET_E2E_DIR:-/opt/chexnet}"
WORK="$(mktemp -d /tmp/chexnet-e2e.XXXXXX)"
KEYS="${WORK}/vendor"
GUIDE="${ROOT}/deployment_template/README.md"
SITE_OPTIONS="--bind 127.0.0.1 --https-port 18443 --http-port 18080 --hostname localhost"
COMPOSE="$(compose_command)" || die "no Docker Compose installed."
# While a run owns DIR, this file names it: a run cut off before its teardown (a killed job, a machine
# restored from a snapshot) leaves both, and the next run clears that install instead of refusing.
OWNER="/var/tmp/chexnet-e2e.owner"

remove_install() {
  docker rm -f chexnet-e2e-orthanc chexnet-e2e-audit-repo >/dev/null 2>&1 || true
  if [[ -f "${DIR}/docker-compose.yml" ]]; then
    (cd "${DIR}" && ${COMPOSE} down --volumes --remove-orphans >/dev/null 2>&1) || true
  fi
  docker ps -aq --filter "name=chexnet-corrupt-" | xargs -r docker rm -f >/dev/null 2>&1 || true
  rm -rf "${DIR}"
  if grep -qx nodes "${OWNER}" 2>/dev/null; then remove_nodes; fi
  if grep -qx calibration "${OWNER}" 2>/dev/null; then rm -rf /srv/calibration; sed -i '/^calibration$/d' "${OWNER}"; fi
}

# The three Swarm nodes of step 5b (test/e2e_three_nodes.sh) and the load sent to them.
remove_nodes() {
  [[ ! -s "${WORK}/load/pid" ]] || kill "$(cat "${WORK}/load/pid")" 2>/dev/null || true
  "${ROOT}/test/swarm_nodes.sh" down
  sed -i '/^nodes$/d' "${OWNER}"
}

if [[ -e "${DIR}" && -f "${OWNER}" && "$(head -n 1 "${OWNER}")" == "${DIR}" ]]; then
  log "${DIR} is left from an end-to-end run that was cut off; removing that install first"
  remove_install
fi
[[ ! -e "${DIR}" ]] || die "${DIR} exists already; remove it, or set CHEXNET_E2E_DIR to a folder that does not exist."
echo "${DIR}" > "${OWNER}"

teardown() {
  log "teardown"
  remove_install
  rm -rf "${WORK}" "${OWNER}"
  docker image rm "chexnet-api-cpu:${V2}" "chexnet-nginx:${V2}" "chexnet-api-cpu:${V3}" "chexnet-nginx:${V3}" >/dev/null 2>&1 || true
}
trap teardown EXIT

# The host's identity as the guide reads it; a machine without SMBIOS takes the guide's site-UUID route.
UUID_FILE_ARG=""
if HOST_UUID="$("${ROOT}/scripts/product-uuid.sh" 2>/dev/null)"; then
  log "this machine's product_uuid: ${HOST_UUID}"
else
  HOST_UUID="$("${PYTHON}" -c 'import uuid; print(uuid.uuid4())')"
  UUID_FILE_ARG=../site-uuid.txt
  log "no SMBIOS UUID here: the guide's site-UUID route with ${HOST_UUID}"
fi
# Root runs the guide's 'sudo' commands as they are: a pass-through sudo, also where sudo is installed (its
# env_reset would drop the DOCKER_HOST that points a command at one of step 5b's nodes).
BIN="${WORK}/bin"
mkdir -p "${BIN}"
printf '#!/bin/sh\nexec "$@"\n' > "${BIN}/sudo" && chmod 755 "${BIN}/sudo"

# carry VERSION FOLDER: what the engineer carries, and nothing else: tarball, signature, vendor certificate, token.
carry() {
  mkdir -p "$2"
  cp "${ROOT}/dist/chexnet-offline-$1-cpu.tar.gz" "${ROOT}/dist/chexnet-offline-$1-cpu.tar.gz.sig" "${KEYS}/vendor_package.crt" "$2/"
  cp "${WORK}/token" "$2/token.txt"
  [[ -z "${UUID_FILE_ARG}" ]] || echo "${HOST_UUID}" > "$2/site-uuid.txt"
}

# guide VERSION FOLDER BLOCK...: run the guide's Linux blocks (SECTION=… for another section; PACS=AE@HOST:PORT
# and PACS_DICOMWEB=URL for its <pacs-…> placeholders, MANAGER_ADDRESS for <manager-address>), word for word, in
# FOLDER (one shell: 'cd' carries on), with the Docker DOCKER_HOST names (a swarm node's in step 5b).
guide() {
  local version="$1" folder="$2" script="" block
  shift 2
  for block in "$@"; do
    script+="$("${PYTHON}" "${ROOT}/test/guide.py" "${GUIDE}" --section "${SECTION:-Linux}" ${PACS:+--pacs "${PACS}"} \
               ${PACS_DICOMWEB:+--pacs-dicomweb "${PACS_DICOMWEB}"} \
               --version "${version}" --block "${block}" --deploy-options "${DEPLOY_OPTIONS:-}" --package-folder "${folder}" \
               ${AUDIT_REPOSITORY:+--audit-ca "${WORK}/atna-pki/ca.pem" --audit-repository "${AUDIT_REPOSITORY}" --server-name e2e-server} \
               --install-options "${SITE_OPTIONS}" ${UUID_FILE_ARG:+--uuid-file "${UUID_FILE_ARG}"} \
               ${MANAGER_ADDRESS:+--manager-address "${MANAGER_ADDRESS}"} \
               | sed "s|/opt/chexnet|${DIR}|g")"$'\n'
  done
  log "guide, blocks $*, in ${folder}:"
  printf '%s' "${script}" | sed 's/^/    $ /' >&2
  (cd "${folder}" && PATH="${BIN}:${PATH}" bash -eEuo pipefail -c "${script}")
}

log "1/6 images (CPU, nginx; the GPU image is built at step 6)"
"${ROOT}/scripts/build-images.sh" cpu

log "2/6 vendor keys (throw-away) and the signed offline package"
"${PYTHON}" -m licensing keygen --out "${KEYS}" >/dev/null
"${PYTHON}" -m licensing package-keygen --out "${KEYS}" >/dev/null
pack() { "${ROOT}/scripts/package-offline.sh" --signing-key "${KEYS}/package_signing.key" --license-key "${KEYS}/vendor_public.pem" --variant cpu "$@"; }
pack
issue() {
  "${PYTHON}" -m licensing issue --key "${KEYS}/vendor_private.pem" --customer "QA" --days 2 \
    --features cxr10,cxr25,chestxray14 "$@"
}
issue --product-uuid "${HOST_UUID}" --subject qa > "${WORK}/token"
issue --product-uuid "$("${PYTHON}" -c 'import uuid; print(uuid.uuid4())')" --subject elsewhere > "${WORK}/wrong-host-token"
"${PYTHON}" - "${KEYS}/vendor_private.pem" "${HOST_UUID}" > "${WORK}/expired-token" <<'PY'
import sys, time
from licensing.keys import load_private_key
from licensing.tokens import issue_token
# Issued 3 days ago for 1 day: expired two days ago, far beyond any clock leeway.
print(issue_token(load_private_key(sys.argv[1]), product_uuid=sys.argv[2], customer="QA", subject="expired",
                  days=1, features=["cxr10"], now=time.time() - 3 * 86400))
PY

log "3/6 forged and damaged packages"
(cd "${ROOT}" && CHEXNET_E2E_TARBALL="${ROOT}/dist/chexnet-offline-${VERSION}-cpu.tar.gz" CHEXNET_E2E_VENDOR="${KEYS}" \
  "${PYTHON}" -m pytest -m e2e test/test_e2e_package.py -p no:cacheprovider -q)
[[ ! -e "${DIR}" ]] || die "a refused package left ${DIR} behind."

log "4/6 the guide, word for word, on a fresh folder (no .env made first)"
carry "${VERSION}" "${WORK}/carry"
guide "${VERSION}" "${WORK}/carry" 0 1 2 3
export CHEXNET_QA_URL=https://localhost:18443 CHEXNET_QA_HTTP_URL=http://localhost:18080 \
       CHEXNET_QA_TOKEN_FILE="${WORK}/token" CHEXNET_QA_CA_CERT="${DIR}/certs/server.crt" \
       CHEXNET_QA_WRONG_HOST_TOKEN_FILE="${WORK}/wrong-host-token" CHEXNET_QA_EXPIRED_TOKEN_FILE="${WORK}/expired-token" \
       CHEXNET_QA_SAMPLES="${SAMPLES}" CHEXNET_E2E_SITE="${DIR}"
"${PYTHON}" "${ROOT}/test/test_chexnet_docker.py" --url "${CHEXNET_QA_URL}" --http-url "${CHEXNET_QA_HTTP_URL}" \
  --token-file "${WORK}/token" --ca-cert "${DIR}/certs/server.crt" --samples "${SAMPLES}" \
  --wrong-host-token-file "${WORK}/wrong-host-token" --expired-token-file "${WORK}/expired-token"
(cd "${ROOT}" && "${PYTHON}" -m pytest -m e2e test/test_e2e_faults.py -p no:cacheprovider -q)

log "4b/6 the guide's DICOM node section; Orthanc (Debian) is the hospital PACS, storescu the modality"
docker build -q -t chexnet-e2e-orthanc "${ROOT}/test/pacs" >/dev/null
network="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cd "${DIR}" && ${COMPOSE} ps -q api)")"
docker run -d --name chexnet-e2e-orthanc --network "${network}" --network-alias orthanc \
  -p 127.0.0.1:14242:4242 -p 127.0.0.1:18042:8042 chexnet-e2e-orthanc >/dev/null
SECTION="DICOM node (optional)" PACS="ORTHANC@orthanc:4242" SITE_OPTIONS="${SITE_OPTIONS} --dicom-bind 127.0.0.1" \
  guide "${VERSION}" "${WORK}/carry/chexnet-offline-${VERSION}-cpu" 0
# dicom_e2e EXPR: the DICOM node's end-to-end tests pytest -k EXPR selects (C-STORE first, then dicomweb after the guide's
# DICOMweb step: STOW-RS in through nginx, results out to Orthanc's DICOMweb plugin by STOW-RS).
dicom_e2e() {
  if ! (cd "${ROOT}" && CHEXNET_E2E_ORTHANC_URL=http://127.0.0.1:18042 CHEXNET_E2E_ORTHANC_DICOM=127.0.0.1:14242 \
        "${PYTHON}" -m pytest -m e2e test/test_e2e_dicom.py -k "$1" -p no:cacheprovider -q); then
    docker logs --tail 60 "$(cd "${DIR}" && ${COMPOSE} ps -q dicom-node)" >&2 || true
    docker logs --tail 30 chexnet-e2e-orthanc >&2 || true
    die "the DICOM node end to end ($1) failed; the node's and Orthanc's last log lines are above."
  fi
}
dicom_e2e "not dicomweb"
SECTION="DICOM node (optional)" PACS="ORTHANC@orthanc:4242" PACS_DICOMWEB="http://orthanc:8042/dicom-web" \
  SITE_OPTIONS="${SITE_OPTIONS} --dicom-bind 127.0.0.1" guide "${VERSION}" "${WORK}/carry/chexnet-offline-${VERSION}-cpu" 1
dicom_e2e dicomweb
docker rm -f chexnet-e2e-orthanc >/dev/null

log "4c/6 the guide's audit repository (IHE ATNA) step; Debian's rsyslog over TLS, in a container, is the hospital's"
"${PYTHON}" "${ROOT}/test/e2e_atna.py" pki "${WORK}/atna-pki" audit-repo
mkdir -p "${WORK}/atna-received"
docker build -q -t chexnet-e2e-audit-repo "${ROOT}/test/audit_repo" >/dev/null
docker run -d --name chexnet-e2e-audit-repo --network "${network}" --network-alias audit-repo \
  -v "${WORK}/atna-pki:/etc/audit-repo/pki:ro" -v "${WORK}/atna-received:/var/log/audit-repo" chexnet-e2e-audit-repo >/dev/null
AUDIT_REPOSITORY=audit-repo guide "${VERSION}" "${WORK}/carry/chexnet-offline-${VERSION}-cpu" 5
if ! "${PYTHON}" "${ROOT}/test/e2e_atna.py" received "${WORK}/atna-received/received.log" --token "${WORK}/token" \
     --ca "${DIR}/certs/server.crt" --source-id e2e-server; then
  docker logs --tail 30 "$(cd "${DIR}" && ${COMPOSE} ps -q api)" >&2 || true
  docker logs --tail 30 chexnet-e2e-audit-repo >&2 || true
  die "the audit repository did not receive the API's messages; the API's and rsyslog's last log lines are above."
fi
docker rm -f chexnet-e2e-audit-repo >/dev/null
log "peak memory of the running containers (sizes mem_limit): $(docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' | tr '\n' ';')"
(cd "${DIR}" && ${COMPOSE} down --volumes --remove-orphans >/dev/null)
rm -rf "${DIR}"

log "5/6 the guide's custom .env path, then upgrade and rollback"
carry "${VERSION}" "${WORK}/carry-custom"
guide "${VERSION}" "${WORK}/carry-custom" 0 1 2 4
# What the engineer changes in an editor: a smaller upload limit, and the guide's "Faster CPU inference":
# OpenVINO bf16 where this CPU has it (every demo bundle carries bf16 then), else int8 for cxr10 only.
sed -i 's/^CHEXNET_MAX_UPLOAD_MB=.*/CHEXNET_MAX_UPLOAD_MB=8/' "${DIR}/.env"
if [[ -n "$(grep -ow -e amx_bf16 -e avx512_bf16 /proc/cpuinfo | sort -u)" ]]; then PRECISION=bf16; else PRECISION=int8; fi
sed -i "s/^CHEXNET_ENGINE=.*/CHEXNET_ENGINE=openvino/; s/^CHEXNET_PRECISION=.*/CHEXNET_PRECISION=${PRECISION}/" "${DIR}/.env"
[[ "${PRECISION}" == bf16 ]] || sed -i 's/^CHEXNET_MODELS=.*/CHEXNET_MODELS=cxr10/' "${DIR}/.env"
guide "${VERSION}" "${WORK}/carry-custom/chexnet-offline-${VERSION}-cpu" 3
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" installed --token "${WORK}/token" --dir "${DIR}" --version "${VERSION}" --max-upload-mb 8 \
  --engine openvino --precision "${PRECISION}"

log "the guide's site calibration: calibrate in the installed API image, install with --site-thresholds"
# What the guide has the engineer put in place first: the site's labelled images, labels.csv beside them (here the
# NIH sample with its own labels, as cxr10 codes).
[[ ! -e /srv/calibration ]] || die "/srv/calibration exists already (the guide's calibration folder); remove it first."
echo calibration >> "${OWNER}"  # from here the teardown removes it
mkdir -p /srv/calibration/images
(cd "${ROOT}/test" && "${PYTHON}" - "${SAMPLES}/nih" <<'PY'
import shutil, sys
from pathlib import Path
from calibration_helpers import cxr10_labels
nih = Path(sys.argv[1])
for name in cxr10_labels(nih, Path("/srv/calibration/labels.csv"))["image"]:
    shutil.copy(nih / name, Path("/srv/calibration/images") / name)
PY
)
guide "${VERSION}" "${WORK}/carry-custom/chexnet-offline-${VERSION}-cpu" 6
[[ -s /srv/calibration/out/calibration-report.html ]] || die "calibrate wrote no report."
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" installed --token "${WORK}/token" --dir "${DIR}" --version "${VERSION}" --max-upload-mb 8 \
  --engine openvino --precision "${PRECISION}" --thresholds site

log "second version ${V2}: same images under a new tag, packed and signed the same way"
docker tag "chexnet-api-cpu:${VERSION}" "chexnet-api-cpu:${V2}"
docker tag "chexnet-nginx:${VERSION}" "chexnet-nginx:${V2}"
pack --version "${V2}"
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" snapshot --dir "${DIR}" --out "${WORK}/before-upgrade.json"
carry "${V2}" "${WORK}/carry-v2"
guide "${V2}" "${WORK}/carry-v2" 0 1 3
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" installed --token "${WORK}/token" --dir "${DIR}" --version "${V2}" --max-upload-mb 8 --same-as "${WORK}/before-upgrade.json" \
  --thresholds site

log "third version ${V3}: an API that cannot start, which the installer must roll back"
printf 'FROM chexnet-api-cpu:%s\nENV CHEXNET_MAX_BATCH=0\n' "${VERSION}" | docker build -q -t "chexnet-api-cpu:${V3}" - >/dev/null
docker tag "chexnet-nginx:${VERSION}" "chexnet-nginx:${V3}"
pack --version "${V3}"
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" snapshot --dir "${DIR}" --out "${WORK}/before-broken.json"
carry "${V3}" "${WORK}/carry-v3"
if guide "${V3}" "${WORK}/carry-v3" 0 1 3 2> "${WORK}/broken.log"; then
  die "the broken version installed without complaint"
fi
grep -q "rolled back to ${V2}" "${WORK}/broken.log" || { cat "${WORK}/broken.log" >&2; die "the installer did not say it rolled back"; }
"${PYTHON}" "${ROOT}/test/e2e_upgrade.py" installed --token "${WORK}/token" --dir "${DIR}" --version "${V2}" --max-upload-mb 8 --same-as "${WORK}/before-broken.json" \
  --thresholds site
(cd "${DIR}" && ${COMPOSE} down --volumes --remove-orphans >/dev/null)
rm -rf "${DIR}"

# shellcheck source=e2e_three_nodes.sh
source "${ROOT}/test/e2e_three_nodes.sh"
remove_nodes
rm -rf "${DIR}"
rm -f "${ROOT}/dist/chexnet-offline-${V2}-cpu.tar.gz"* "${ROOT}/dist/chexnet-offline-${V3}-cpu.tar.gz"*

log "6/6 GPU image on the CPU (no GPU here)"
"${ROOT}/scripts/build-images.sh" gpu
out="$(docker run --rm -v "${SAMPLES}:/data:ro" "chexnet-api-gpu:${VERSION}" \
  python -m chexnet predict --bundle /opt/chexnet/models/cxr10 --engine torch --device auto --json /data/nih/00000075_000.png)"
echo "${out}" | cut -c1-240
echo "${out}" | "${PYTHON}" -c 'import json,sys; r=json.loads(sys.stdin.readline()); assert r["model"]["engine"]=="torch" and r["model"]["device"]=="cpu" and len(r["findings"])==10, r'
# What a GPU host needs of the image, checked without one (issue 22): torch built for sm_75 (RTX 2080 Ti) and
# sm_90 (H100/H200); every library its CUDA libraries need (ldd), and those cuDNN, cuBLAS, NVRTC and torch open
# by name at first use, resolve inside the image (test/gpu_image_check.py; the 'ok ldd' lines left out here).
docker run --rm -v "${ROOT}/test/gpu_image_check.py:/check.py:ro" "chexnet-api-gpu:${VERSION}" python /check.py \
  | grep -v '^ok    ldd ' >&2
# The driver the image's labels ask for is the one scripts/versions.env names (preflight reads the same file).
labels="$(docker image inspect "chexnet-api-gpu:${VERSION}" \
  -f '{{index .Config.Labels "com.nvidia.driver.minimum"}} {{index .Config.Labels "com.nvidia.driver.minimum.windows"}}')"
expected="$(set +u; source "${ROOT}/scripts/versions.env"; echo "${MIN_NVIDIA_DRIVER} ${MIN_NVIDIA_DRIVER_WINDOWS}")"
[[ "${labels}" == "${expected}" ]] || die "the GPU image's minimum-driver labels are '${labels}', scripts/versions.env says '${expected}'"
log "GPU image: driver labels ${labels} (Linux, Windows), as scripts/versions.env"
log "end to end: all passed"
