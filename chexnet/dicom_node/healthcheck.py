"""``python -m chexnet.dicom_node.healthcheck``: exit 0 when this container's DICOM node answers a C-ECHO
(Docker HEALTHCHECK). It calls with the node's own AE title, which the node admits for C-ECHO only."""

import logging
import sys

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from chexnet.api.settings import SettingsError
from chexnet.dicom_node.settings import NodeSettings


def main() -> int:
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    try:
        node = NodeSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ae = AE(ae_title=node.ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 4
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return 1
    try:
        status = assoc.send_c_echo()
        return 0 if status and status.Status == 0 else 1
    finally:
        assoc.release()


if __name__ == "__main__":
    sys.exit(main())
