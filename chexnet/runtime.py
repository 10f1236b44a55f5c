"""What the product changes in the libraries it drives, process-wide, and only when asked: :func:`configure`.

Importing a ``chexnet`` module changes nothing outside it (``test/test_import_side_effects.py``). The
entry points call ``chexnet.configure()`` once, before any DICOM is read: ``python -m chexnet`` (predict,
serve, dicom-node, bundle), :func:`chexnet.api.create_app` and the test suite. It is idempotent and
thread-safe, so calling it again is harmless. Reading DICOM without it is refused
(:class:`chexnet.imaging.dicom.NotConfigured`), never done without the element budget.

What it sets, and why:

- pydicom's and highdicom's log records quote element values (a patient's name): a filter on their
  loggers replaces every quoted value (:class:`RedactQuoted`), and the same warnings through the
  ``warnings`` module, which would reach stderr with their values, are ignored;
- pydicom logs a full traceback for every codec plugin that fails before it raises; the failure reaches
  the caller as one typed error instead, so those records are silenced; highdicom's INFO lines (one per
  copied module, naming the source instance) are noise in the service's log;
- 12-bit JPEG Extended is decoded by imagecodecs (:mod:`chexnet.imaging.jpeg12`), added after pydicom's
  own plugins; GDCM decodes only what nothing else here does (JPEG lossless): on inconsistent headers it
  can abort the whole process (an uncaught C++ exception), so it never sees the syntaxes others decode;
- the element budget (:func:`chexnet.imaging.dicom.install_element_budget`): pydicom's element generator
  charges every element, at any depth, to the budget of the read in progress.

The DICOM node's own changes to pynetdicom (where received data sets are written, its log level) are made
when the node starts (:meth:`chexnet.dicom_node.receiving.ReceivedFiles.install`, ``python -m chexnet
dicom-node``), in the node's process only.
"""

import importlib.util
import logging
import re
import threading
import warnings

JPEG12_PLUGIN = "chexnet-imagecodecs"
_LOCK = threading.Lock()


class RedactQuoted(logging.Filter):
    """pydicom's warnings quote element values; the JSON log keeps the warning, not the value."""

    _QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._QUOTED.sub("'…'", record.getMessage()), None
        return True


_REDACT = RedactQuoted()  # one instance: a logger holds it once however often configure() runs


def configure() -> None:
    """Set up pydicom and highdicom as the product needs them (the module's docstring says what and why)."""
    with _LOCK:
        _quiet("pydicom")
        logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)
        _quiet("highdicom")
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        _codecs()
        from chexnet.imaging.dicom import install_element_budget

        install_element_budget()  # last: reads are refused until it is in place


def _quiet(library: str) -> None:
    logging.getLogger(library).addFilter(_REDACT)
    module = re.compile(rf"{library}(\.|$)")
    if not any(
        action == "ignore" and pattern == module and category is Warning and lineno == 0 and message is None
        for action, message, category, pattern, lineno in warnings.filters
    ):
        warnings.filterwarnings("ignore", module=module.pattern)


def _codecs() -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLSLossless,
        JPEGLSNearLossless,
    )

    twelve = get_decoder(JPEGExtended12Bit)
    # jpeg12 imports imagecodecs: added available, or not at all where imagecodecs is not installed (a checkout
    # without the dicom extra, the GPU check's machine), where pydicom's add_plugin would raise ImportError
    if JPEG12_PLUGIN not in twelve.available_plugins and importlib.util.find_spec("imagecodecs") is not None:
        twelve.add_plugin(JPEG12_PLUGIN, ("chexnet.imaging.jpeg12", "_decode_frame"))
    for syntax in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000):
        if "gdcm" in get_decoder(syntax).available_plugins:
            get_decoder(syntax).remove_plugin("gdcm")
