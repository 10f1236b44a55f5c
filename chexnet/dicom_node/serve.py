"""``python -m chexnet dicom-node``: the DICOM node, settings from the CHEXNET_* and CHEXNET_DICOM_* variables;
it runs until SIGTERM or SIGINT."""

import logging
import signal
import sys

from chexnet.dicom_node.settings import NodeSettings
from chexnet.service import DICOM_NODE, Settings, SettingsError, configure_logging


def serve() -> int:
    try:
        settings, node_settings = Settings.from_env(workload=DICOM_NODE), NodeSettings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO and DEBUG lines dump datasets
    from chexnet.dicom_node.node import DicomNode
    from chexnet.dicom_node.peers import PeerText

    for handler in logging.getLogger().handlers:
        handler.addFilter(PeerText())

    node = DicomNode(settings, node_settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop())
    try:
        node.start()
    except SettingsError as exc:  # a port it cannot open
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node.wait()
    return 0
