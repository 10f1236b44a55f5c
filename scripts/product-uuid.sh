#!/usr/bin/env bash
# Print this Linux server's product_uuid (lower case), the value a field engineer sends to the
# vendor to have a licence token issued. Needs root on most distributions.
# Usage: product-uuid.sh [FILE]   (default /sys/class/dmi/id/product_uuid)
set -euo pipefail

file="${1:-/sys/class/dmi/id/product_uuid}"
if [[ ! -e "$file" ]]; then
  echo "error: $file does not exist: this machine (or VM) exposes no SMBIOS UUID." >&2
  echo "       Ask the hypervisor administrator to enable it (VMware: uuid.bios; KVM: <sysinfo>), then retry." >&2
  exit 1
fi
if [[ ! -r "$file" ]]; then
  echo "error: $file is readable by root only: run 'sudo $0'." >&2
  exit 1
fi
value="$(tr '[:upper:]' '[:lower:]' < "$file" | tr -d '[:space:]')"
if [[ ! "$value" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]]; then
  echo "error: $file holds '$value', which is not a UUID." >&2
  exit 1
fi
case "$value" in
  00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)
    echo "error: $file holds the placeholder $value, which identifies no machine." >&2
    exit 1 ;;
esac
echo "$value"
