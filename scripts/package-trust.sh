# shellcheck shell=bash
# Offline package trust, sourced by load-images.sh and install.sh (needs lib.sh first).
# The key that verifies a package never comes from the package: the vendor's certificate
# (vendor_package.crt) or its sha256 fingerprint reaches the site out of band, with the licence token.
# Signatures are RSA-PSS over SHA-256 (salt 32), which openssl and .NET Framework both verify.

# Set by stage_package for the scripts that source this file: the vendor's certificate and the package, both
# root's private copies in STAGING (a 0700 folder of the user running the script, removed by remove_staging).
# shellcheck disable=SC2034
VENDOR_CERT=""
STAGED=""
STAGING=""
STAGING_ROOT=/var/tmp  # on disk (not a tmpfs), where root's private copies are made
PSS_OPTS=(-sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32)
NO_KEY_SENTENCE="no vendor key given: pass --vendor-key vendor_package.crt or --vendor-fingerprint HEX, which the vendor sends with your licence token (never trust a key from inside the package)."

# cert_fingerprint CERT: sha256 of the certificate's DER, 64 lower-case hex digits.
cert_fingerprint() {
  openssl x509 -in "$1" -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}

# verify_signature CERT FILE SIG: exit status 0 when SIG is the vendor's signature over FILE.
verify_signature() {
  local pubkey
  pubkey="$(openssl x509 -in "$1" -pubkey -noout 2>/dev/null)" || return 1
  openssl dgst "${PSS_OPTS[@]}" -verify <(printf '%s\n' "${pubkey}") -signature "$3" "$2" >/dev/null 2>&1
}

# private_copy FILE COPY MAX_BYTES: COPY (mode 600) holds FILE as it was read once, without following a
# link or waiting on a FIFO; exit status 1 when FILE is not a regular file, cannot be read or is larger.
private_copy() {
  [[ -f "$1" && ! -L "$1" ]] || return 1
  (umask 077 && dd if="$1" of="$2" iflag=nofollow,nonblock status=none 2>/dev/null) || return 1
  (( $(stat -c %s -- "$2") <= $3 ))
}

# vendor_cert PACKAGE KEY_FILE FINGERPRINT: sets VENDOR_CERT to STAGING's copy of the certificate to verify
# with (--vendor-key, or the package's own certificate when it has the --vendor-fingerprint), or dies.
vendor_cert() {
  local package="$1" key="$2" wanted="$3" actual
  VENDOR_CERT="${STAGING}/vendor_package.crt"
  if [[ -n "${wanted}" ]]; then
    wanted="$(printf '%s' "${wanted}" | tr -d ': ' | tr 'A-F' 'a-f')"
    [[ "${wanted}" =~ ^[0-9a-f]{64}$ ]] || die "--vendor-fingerprint must be the 64 hex digits printed on the delivery note."
  fi
  if [[ -n "${key}" ]]; then
    private_copy "${key}" "${VENDOR_CERT}" 65536 || die "--vendor-key ${key} is not a readable file; use the vendor_package.crt the vendor sent with your token."
    openssl x509 -in "${VENDOR_CERT}" -noout 2>/dev/null || die "--vendor-key ${key} is not the vendor's certificate (vendor_package.crt, PEM)."
    actual="$(cert_fingerprint "${VENDOR_CERT}")"
    [[ -z "${wanted}" || "${actual}" == "${wanted}" ]] || die "--vendor-key ${key} does not have the fingerprint given with --vendor-fingerprint; ask the vendor which is right."
  elif [[ -n "${wanted}" ]]; then
    private_copy "${package}/vendor_package.crt" "${VENDOR_CERT}" 65536 \
      || die "the package holds no vendor_package.crt to compare with the fingerprint; pass --vendor-key instead."
    actual="$(cert_fingerprint "${VENDOR_CERT}")"
    [[ "${actual}" == "${wanted}" ]] || die "the package's signing certificate does not match the fingerprint from the vendor; do not install this package."
  else
    die "${NO_KEY_SENTENCE}"
  fi
}

# stage_package PACKAGE TARBALL KEY_FILE FINGERPRINT: the tarball the vendor sent (TARBALL, or the
# <PACKAGE>.tar.gz beside the unpacked folder PACKAGE) and its .sig are copied into STAGING, a new 0700
# folder of the user running this (root); the signature is checked over that copy, which is then unpacked
# there and checked again (verify_package). Sets STAGED to that folder: from then on the caller reads only
# STAGED, never the unpacked folder, which its owner may change at any time. Nothing changes on the host
# but STAGING if this dies. What it protects against, and what not: DESIGN.md "Offline package trust".
stage_package() {
  local package="$1" tarball="$2" key="$3" fingerprint="$4" name need free top
  name="$(basename "${package}")"
  tarball="${tarball:-$(dirname "${package}")/${name}.tar.gz}"
  [[ -f "${tarball}" && -f "${tarball}.sig" ]] \
    || die "the installer verifies the tarball the vendor sent before it uses anything from it: keep ${name}.tar.gz and its .sig beside the unpacked folder, or name it with --package FILE."
  STAGING="$(mktemp -d "${STAGING_ROOT}/chexnet-package.XXXXXX")" || die "cannot make a private folder in ${STAGING_ROOT} to verify the package in."
  # The tarball's copy and what it unpacks to, with room to spare.
  need=$(( $(stat -L -c %s -- "${tarball}") * 2 / 1048576 + 64 ))
  free=$(( $(df -Pk -- "${STAGING}" | awk 'NR == 2 { print $4 }') / 1024 ))
  (( free >= need )) || die "${STAGING%/*} has ${free} MiB free; verifying the package needs ${need} MiB there (twice the tarball); free some space."
  vendor_cert "${package}" "${key}" "${fingerprint}"
  if ! private_copy "${tarball}.sig" "${STAGING}/package.tar.gz.sig" 65536 \
     || ! private_copy "${tarball}" "${STAGING}/package.tar.gz" $(( need * 1048576 )); then
    die "${tarball} or its .sig cannot be read as a plain file; copy them from the delivery medium again."
  fi
  verify_signature "${VENDOR_CERT}" "${STAGING}/package.tar.gz" "${STAGING}/package.tar.gz.sig" \
    || die "the vendor signature over ${tarball} does not verify with the vendor's certificate; do not install this package."
  log "tarball verified: vendor signature OK over ${tarball##*/} (certificate fingerprint $(cert_fingerprint "${VENDOR_CERT}"))"
  mkdir -m 700 "${STAGING}/unpacked"
  tar -xzf "${STAGING}/package.tar.gz" -C "${STAGING}/unpacked" --no-same-owner --no-same-permissions \
    || die "the signed tarball ${tarball} cannot be unpacked; copy it from the delivery medium again."
  rm -f -- "${STAGING}/package.tar.gz"
  top="$(cd "${STAGING}/unpacked" && find . -mindepth 1 -maxdepth 1 -printf '%P\n')"
  [[ "${top}" =~ ^chexnet-offline-[0-9A-Za-z._-]+$ && -d "${STAGING}/unpacked/${top}" ]] \
    || die "the signed tarball ${tarball} does not hold one chexnet-offline-* folder; ask the vendor."
  STAGED="${STAGING}/unpacked/${top}"
  verify_package "${STAGED}" "${VENDOR_CERT}"
}

# one_at_a_time LOCK: dies unless this is the only install.sh or swarm-deploy.sh running on this host: two at
# once would snapshot, configure and roll back the same folder over each other. LOCK is in /run, where only
# root writes (a lock file in a folder any user may write could be planted by one).
one_at_a_time() {
  exec 9> "$1" || die "cannot open $1 (run this as root)."
  flock -n 9 || die "another install or upgrade is running on this host; wait until it has finished, then run this again."
}

# remove_staging: what stage_package made goes (an EXIT trap calls it).
remove_staging() {
  [[ -z "${STAGING}" ]] || rm -rf -- "${STAGING}"
}

# package_value FILE PATTERN: the one line of STAGED/FILE, if it matches PATTERN; else dies.
package_value() {
  local value
  value="$(cat "${STAGED}/$1")"
  [[ "${value}" =~ $2 ]] || die "the package's $1 is not valid; ask the vendor."
  printf '%s\n' "${value}"
}

# --- downgrades: every package carries SEQUENCE (signed, increasing from build to build; at most 18 digits,
# so that bash compares it as a number) ---------------------------------------------------------------------
# The site keeps the sequence and version of the package it last installed in DIR/.package-sequence.

# check_not_older DIR ALLOW: dies before anything changes when STAGED is older than the package installed
# in DIR (a lower sequence; for a site installed before sequences, a lower version), unless ALLOW is 1.
check_not_older() {
  local dir="$1" allow="$2" record="$1/.package-sequence" sequence version old_sequence="" old_version=""
  sequence="$(package_value SEQUENCE '^[1-9][0-9]{0,17}$')"
  version="$(package_value VERSION '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$')"
  if [[ -e "${record}" || -L "${record}" ]]; then
    check_site_file "${record}"
    read -r old_sequence old_version < "${record}" || true
    [[ "${old_sequence}" =~ ^[1-9][0-9]{0,17}$ ]] || die "${record} is damaged; remove it only if you know which version runs here."
    (( sequence >= old_sequence )) && return 0
  elif [[ -f "${dir}/.env" ]]; then
    old_version="$(env_value CHEXNET_VERSION)"
    [[ -n "${old_version}" && "$(printf '%s\n%s\n' "${old_version}" "${version}" | sort -V | head -n 1)" == "${old_version}" ]] && return 0
    [[ -n "${old_version}" ]] || return 0
    old_sequence="unknown"
  else
    return 0
  fi
  if [[ "${allow}" == 1 ]]; then
    warn "installing version ${version} (sequence ${sequence}) over the newer ${old_version} (sequence ${old_sequence}): --allow-downgrade"
    return 0
  fi
  die "this package (version ${version}, sequence ${sequence}) is older than the one installed in ${dir} (version ${old_version}, sequence ${old_sequence}); pass --allow-downgrade only if the vendor told you to install an older version."
}

# record_installed DIR: DIR/.package-sequence names STAGED's sequence and version (after a good install).
record_installed() {
  printf '%s %s\n' "$(package_value SEQUENCE '^[1-9][0-9]{0,17}$')" "$(package_value VERSION '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$')" > "$1/.package-sequence.tmp"
  chmod 644 "$1/.package-sequence.tmp"
  mv -f -- "$1/.package-sequence.tmp" "$1/.package-sequence"
}

# The characters a path in the package may hold, the same set a SHA256SUMS line allows: no space, no
# control character, nothing a line-based tool would split on. Listed one by one, not as ranges, so that
# no locale widens the set.
PORTABLE_PATH_CHARS='abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-'
SUMS_LINE='^[0-9a-f]{64}  [A-Za-z0-9_.][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$'

# listed_files PACKAGE: the paths SHA256SUMS lists, one per line (after verify_package: each is portable).
listed_files() {
  sed -n 's/^[0-9a-f]\{64\}  //p' "$1/SHA256SUMS"
}

# shown NAME: NAME on one line for a sentence, control characters escaped as bash does ($'x\n').
shown() {
  printf '%q' "$1"
}

# check_entries PACKAGE: every entry under PACKAGE is a plain file or folder with a portable name. find
# hands over NUL-terminated names, so a name holding a line break is one entry, never an empty line.
check_entries() {
  local package="$1" entry kind
  while IFS= read -r -d '' entry; do
    kind="${entry%% *}"
    entry="${entry#* }"
    [[ -n "${entry}" && "${entry}" != *[!"${PORTABLE_PATH_CHARS}"]* ]] \
      || die "the package holds an entry named $(shown "${entry}"), which has a character other than letters, digits, '.', '_', '-' and '/'; do not install this package."
    [[ "${kind}" == [fd] ]] || die "the package holds ${entry}, which is not a plain file; do not install this package."
  done < <(cd "${package}" && LC_ALL=C find . -mindepth 1 -printf '%y %P\0')
  wait "$!" || die "${package} cannot be read in full; run as the user who unpacked it, or as root."
}

# check_sums_lines SUMS: each line is '<64 hex>  <portable relative path>', nothing else (no CR, BOM, NUL,
# '.' or '..' part), and no path is listed twice (compared without case, as Windows would).
check_sums_lines() {
  local sums="$1" twice
  if [[ ! -s "${sums}" ]] || LC_ALL=C grep -avqE "${SUMS_LINE}" "${sums}" || LC_ALL=C grep -aqE '(  |/)\.\.?(/|$)' "${sums}"; then
    die "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package."
  fi
  twice="$(cut -c67- "${sums}" | LC_ALL=C sort -f | LC_ALL=C uniq -di | head -n 1)"
  [[ -z "${twice}" ]] || die "SHA256SUMS lists ${twice} more than once; do not install this package."
}

# verify_package PACKAGE CERT: only plain files and folders with portable names, the signature over
# SHA256SUMS, its lines, no file it does not list, every checksum. Changes nothing on the host; dies
# with one sentence on the first problem.
verify_package() {
  local package="$1" cert="$2" entry
  [[ -f "${package}/SHA256SUMS" && -f "${package}/SHA256SUMS.sig" ]] \
    || die "${package} has no SHA256SUMS or SHA256SUMS.sig; is this an unpacked chexnet-offline package?"
  # First, so that nothing below opens a link, FIFO or device (SHA256SUMS itself included).
  check_entries "${package}"
  verify_signature "${cert}" "${package}/SHA256SUMS" "${package}/SHA256SUMS.sig" \
    || die "the vendor signature over SHA256SUMS does not verify with ${cert}; do not install this package."
  check_sums_lines "${package}/SHA256SUMS"
  # The files present less the files listed, as NUL-terminated sorted lists: any one left is refused.
  if IFS= read -r -d '' entry < <(LC_ALL=C comm -z -23 \
       <(cd "${package}" && find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.sig -printf '%P\0' | LC_ALL=C sort -z) \
       <(listed_files "${package}" | tr '\n' '\0' | LC_ALL=C sort -z)); then
    die "the package holds $(shown "${entry}"), which SHA256SUMS does not list; do not install this package."
  fi
  (cd "${package}" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) \
    || die "a file of the package is damaged or missing (SHA256SUMS); copy the package again."
  log "package verified: vendor signature OK (certificate fingerprint $(cert_fingerprint "${cert}"))"
}

# copy_listed PACKAGE FILE DEST MODE: root's own copy of a file SHA256SUMS lists (after verify_package),
# read without following a link swapped in since, and refused unless it is the file that was verified.
copy_listed() {
  local package="$1" file="$2" dest="$3" mode="$4" wanted
  wanted="$(LC_ALL=C awk -v f="${file}" 'substr($0, 67) == f { print substr($0, 1, 64); exit }' "${package}/SHA256SUMS")"
  rm -f -- "${dest}"
  if ! (umask 077 && dd if="${package}/${file}" of="${dest}" iflag=nofollow,nonblock status=none 2>/dev/null) \
     || [[ -z "${wanted}" || "$(sha256sum < "${dest}" | cut -c1-64)" != "${wanted}" ]]; then
    rm -f -- "${dest}"
    die "${package}/${file} changed after the package was verified; unpack the package again."
  fi
  chmod "${mode}" "${dest}"
}

# load_images PACKAGE: docker load the image archives SHA256SUMS lists (after verify_package).
load_images() {
  local package="$1" archive
  while IFS= read -r archive; do
    [[ "${archive}" == images/*.tar.gz ]] || continue
    log "docker load ${archive}"
    docker load -i "${package}/${archive}" | sed 's/^/    /' >&2 || die "docker load ${archive} failed."
  done < <(listed_files "${package}")
}
