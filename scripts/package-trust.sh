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

# listed_files PACKAGE: the paths SHA256SUMS lists, one per line (after verify_package).
listed_files() {
  sed -n 's/^[0-9a-f]\{64\}  //p' "$1/SHA256SUMS"
}

# verify_package PACKAGE CERT: the signature over SHA256SUMS, that every file is listed, every checksum.
# Changes nothing on the host; dies with one sentence on the first problem.
verify_package() {
  local package="$1" cert="$2" entry
  [[ -f "${package}/SHA256SUMS" && -f "${package}/SHA256SUMS.sig" ]] \
    || die "${package} has no SHA256SUMS or SHA256SUMS.sig; is this an unpacked chexnet-offline package?"
  verify_signature "${cert}" "${package}/SHA256SUMS" "${package}/SHA256SUMS.sig" \
    || die "the vendor signature over SHA256SUMS does not verify with ${cert}; do not install this package."
  # Each line: 64 hex digits, two spaces, a plain relative path (no '..', no leading '/', no odd characters).
  if grep -Evq '^[0-9a-f]{64}  [A-Za-z0-9_.][A-Za-z0-9._/-]*$' "${package}/SHA256SUMS" || grep -q '\.\./\|/\.\.' "${package}/SHA256SUMS"; then
    die "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package."
  fi
  # Anything but plain files and folders (links, devices) is refused, and so is any file not listed.
  entry="$(cd "${package}" && find . -mindepth 1 ! -type f ! -type d -printf '%P\n' | head -n 1)"
  [[ -z "${entry}" ]] || die "the package holds ${entry}, which is not a plain file; do not install this package."
  entry="$(cd "${package}" && find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.sig -printf "%P\n" | LC_ALL=C sort \
           | comm -23 - <(listed_files "${package}" | LC_ALL=C sort) | head -n 1)"
  [[ -z "${entry}" ]] || die "the package holds ${entry}, which SHA256SUMS does not list; do not install this package."
  (cd "${package}" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1) \
    || die "a file of the package is damaged or missing (SHA256SUMS); copy the package again."
  log "package verified: vendor signature OK (certificate fingerprint $(cert_fingerprint "${cert}"))"
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
