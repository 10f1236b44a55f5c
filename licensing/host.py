"""This server's identity: the SMBIOS product_uuid, normalised and compared with a token's."""

import re
import uuid
from pathlib import Path

from licensing.errors import LicenseConfigError

DEFAULT_UUID_FILE = "/sys/class/dmi/id/product_uuid"
_PLACEHOLDERS = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}
_FIX = (
    "run scripts/product-uuid.sh as root on the host (Get-CimInstance on Windows: scripts/product-uuid.ps1), "
    "write its output to a file and point CHEXNET_PRODUCT_UUID_FILE at it"
)


def normalise(value: str) -> str:
    """Canonical lower-case 8-4-4-4-12 form; raises ValueError for anything that is not a UUID."""
    text = value.strip().strip("{}")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}", text):
        raise ValueError(f"'{value.strip()[:40]}' is not a UUID")
    return str(uuid.UUID(text))


def swap_endian(value: str) -> str:
    """The mixed-endian form some hypervisors report: first three fields byte-swapped."""
    return str(uuid.UUID(bytes_le=uuid.UUID(value).bytes))


def same_host(token_uuid: str, host_uuid: str) -> bool:
    try:
        token = normalise(token_uuid)
    except ValueError:
        return False
    return token in (host_uuid, swap_endian(host_uuid))


def read_host_uuid(path: str | Path = DEFAULT_UUID_FILE, node: str = "") -> str:
    """This server's product_uuid from PATH. With NODE (a cluster: CHEXNET_NODE_NAME), PATH lists every
    node as '<hostname> <product_uuid>' lines and this node's line is the one read."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise LicenseConfigError(f"This machine has no {path} (a VM without SMBIOS?); {_FIX}.") from None
    except PermissionError:
        raise LicenseConfigError(f"{path} is readable by root only; {_FIX}.") from None
    except OSError as exc:
        raise LicenseConfigError(f"Cannot read {path} ({exc.strerror}); {_FIX}.") from None
    if node:
        raw = _node_entry(raw, path, node)
    try:
        value = normalise(raw)
    except ValueError as exc:
        raise LicenseConfigError(f"{path} does not hold a product_uuid ({exc}); {_FIX}.") from None
    if value in _PLACEHOLDERS:
        raise LicenseConfigError(f"{path} holds the placeholder UUID {value}, which identifies no machine; {_FIX}.")
    return value


def _node_entry(text: str, path: Path, node: str) -> str:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2:
            entries.setdefault(fields[0].lower(), fields[1])
        elif fields:
            raise LicenseConfigError(
                f"{path}: the line '{line.strip()[:60]}' is not '<node hostname> <product_uuid>'; "
                "fix the cluster's node list and deploy again."
            )
    if node.lower() not in entries:
        raise LicenseConfigError(
            f"{path} has no line for node '{node}'; add '{node} <its product_uuid>' "
            "(scripts/product-uuid.sh on that node) to the cluster's node list and deploy again."
        )
    return entries[node.lower()]
