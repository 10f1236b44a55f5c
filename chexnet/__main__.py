"""``python -m chexnet``: the offline commands (chexnet.cli) and the two services, each started by its own
transport; the CLI, the REST API and the DICOM node import none of each other."""

import argparse
import sys

from chexnet.cli import main


def _serve(args: argparse.Namespace) -> int:
    from chexnet.api.serve import serve

    return serve(args.host, args.port)


def _dicom_node(args: argparse.Namespace) -> int:
    from chexnet.dicom_node.serve import serve

    return serve()


sys.exit(main(services={"serve": _serve, "dicom-node": _dicom_node}))
