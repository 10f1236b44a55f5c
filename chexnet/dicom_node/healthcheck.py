"""``python -m chexnet.dicom_node.healthcheck``: exit 0 when this container's DICOM node answers a C-ECHO
with success (Docker HEALTHCHECK). It calls with the node's own AE title, which the node admits for
C-ECHO only. The node answers a failure, with the reason as its Error Comment, while a queue holds work
that has not moved (:meth:`chexnet.dicom_node.node.DicomNode.stalled`); the reason is printed."""

import logging
import sys

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes these at import

from chexnet.dicom_node.settings import NodeSettings
from chexnet.service import SettingsError


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
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(node.bind, node.bind)
    assoc = ae.associate(host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        print("unhealthy: the node does not accept an association")
        return 1
    try:
        status = assoc.send_c_echo()
        if status and status.Status == 0:
            return 0
        print(f"unhealthy: {getattr(status, 'ErrorComment', None) or 'no answer to C-ECHO'}")  # kept by docker inspect
        return 1
    finally:
        assoc.release()


if __name__ == "__main__":
    sys.exit(main())
