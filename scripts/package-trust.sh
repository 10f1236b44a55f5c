# shellcheck shell=bash
# Offline package trust, sourced by load-images.sh and install.sh (needs lib.sh first).
# The key that verifies a package never comes from the package: the vendor's certificate
# (vendor_package.crt) or its sha256 fingerprint reaches the site out of band, with the licence token.
# Signatures are RSA-PSS over SHA-256 (salt 32), which openssl and .NET Framework both verify.

# Set by vendor_cert for the scripts that source this file.
# shellcheck disable=SC2034
VENDOR_CERT=""
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

# vendor_cert PACKAGE KEY_FILE FINGERPRINT: sets VENDOR_CERT to the certificate to verify with, or dies.
vendor_cert() {
  local package="$1" key="$2" wanted="$3" actual
  if [[ -n "${key}" ]]; then
    [[ -f "${key}" ]] || die "--vendor-key ${key} does not exist; use the vendor_package.crt the vendor sent with your token."
    openssl x509 -in "${key}" -noout 2>/dev/null || die "--vendor-key ${key} is not the vendor's certificate (vendor_package.crt, PEM)."
    actual="$(cert_fingerprint "${key}")"
    if [[ -n "${wanted}" ]]; then
      wanted="$(printf '%s' "${wanted}" | tr -d ': ' | tr 'A-F' 'a-f')"
      [[ "${actual}" == "${wanted}" ]] || die "--vendor-key ${key} does not have the fingerprint given with --vendor-fingerprint; ask the vendor which is right."
    fi
    VENDOR_CERT="${key}"
  elif [[ -n "${wanted}" ]]; then
    wanted="$(printf '%s' "${wanted}" | tr -d ': ' | tr 'A-F' 'a-f')"
    [[ "${wanted}" =~ ^[0-9a-f]{64}$ ]] || die "--vendor-fingerprint must be the 64 hex digits printed on the delivery note."
    [[ -f "${package}/vendor_package.crt" ]] || die "the package holds no vendor_package.crt to compare with the fingerprint; pass --vendor-key instead."
    actual="$(cert_fingerprint "${package}/vendor_package.crt")"
    [[ "${actual}" == "${wanted}" ]] || die "the package's signing certificate does not match the fingerprint from the vendor; do not install this package."
    VENDOR_CERT="${package}/vendor_package.crt"
  else
    die "${NO_KEY_SENTENCE}"
  fi
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
