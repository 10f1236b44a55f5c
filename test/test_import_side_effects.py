"""Importing ``chexnet`` changes nothing outside it (issue 21, item 5): pydicom's pixel decoders, its element
generator, pynetdicom's temporary files, ``warnings.filters`` and the loggers are as they were after every
``chexnet`` module has been imported. ``chexnet.configure()`` (every entry point calls it) then makes
exactly the changes the product needs, idempotently, and DICOM is read only after it.

All of it runs in a fresh interpreter: this one has been configured by conftest."""

import json
import subprocess
import sys

import numpy as np

import hostile_files
from dicom_factory import make_dicom
from sample_data import ROOT

_PROBE = r"""
import ast, importlib, json, logging, pkgutil, sys, warnings
from pathlib import Path

root, plain_path, bomb_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
OURS = ("chexnet", "licensing")  # this repository's packages: never imported before the first snapshot


def module_level_imports(body):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for block in ("body", "orelse", "handlers", "finalbody"):
            if isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)) and hasattr(node, block):
                yield from module_level_imports(getattr(node, block))


# Libraries change global state when they are imported (numpy, torch and urllib3 add warning filters): that
# is theirs, not chexnet's. So everything chexnet's modules import at module level is imported first.
libraries = []
for path in sorted((root / "chexnet").rglob("*.py")):
    for node in module_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            libraries += [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            libraries += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
for name in dict.fromkeys(libraries):
    if name.split(".")[0] not in OURS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a name imported from a module, not a module; or an optional library absent here
assert not [name for name in sys.modules if name.split(".")[0] in OURS], "imported chexnet too early"

import pydicom.config
import pydicom.filereader
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pynetdicom import _config as pynetdicom_config, dimse_messages

WATCHED_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "highdicom", "pynetdicom")


def logger_state(logger):
    return repr((logging.getLevelName(logger.level), logger.propagate, logger.disabled, logger.filters,
                 logger.handlers))


DEFAULT_LOGGER = logger_state(logging.Logger("default"))


def snapshot():
    for name in WATCHED_LOGGERS:
        logging.getLogger(name)  # present in every snapshot, configured or not
    state = {"warnings.filters": [repr(f) for f in warnings.filters],
             "logging.disable": repr(logging.root.manager.disable),
             "logger (root)": logger_state(logging.getLogger())}
    for name, logger in sorted(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            state[f"logger {name}"] = logger_state(logger)
    for uid, (decoder, _) in _PIXEL_DATA_DECODERS.items():
        state[f"decoder {uid.name}"] = repr((list(decoder._available.items()), list(decoder._unavailable)))
    state["pydicom.filereader.data_element_generator"] = repr(pydicom.filereader.data_element_generator)
    state["pydicom.config"] = repr({k: v for k, v in sorted(vars(pydicom.config).items()) if not k.startswith("_")
                                    and isinstance(v, (bool, int, float, str, type(None)))})
    state["pydicom.config.settings"] = repr(sorted(vars(pydicom.config.settings).items()))
    state["pynetdicom NamedTemporaryFile"] = repr(dimse_messages.NamedTemporaryFile)
    state["pynetdicom STORE_RECV_CHUNKED_DATASET"] = repr(pynetdicom_config.STORE_RECV_CHUNKED_DATASET)
    return state


def changes(before, after):
    changed = {}
    for key in sorted(set(before) | set(after)):
        if key not in before and key.startswith("logger ") and after[key] == DEFAULT_LOGGER:
            continue  # a logger created (logging.getLogger) and left as it is
        if before.get(key) != after.get(key):
            changed[key] = [before.get(key), after.get(key)]
    return changed


report = {}
before = snapshot()
generator = pydicom.filereader.data_element_generator
imported, failed = [], []
import chexnet

for info in pkgutil.walk_packages(chexnet.__path__, "chexnet.", onerror=lambda name: failed.append([name, "walk"])):
    if info.name.split(".")[-1] == "__main__":
        continue  # the CLI itself: importing it runs it
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except ImportError as exc:
        failed.append([info.name, repr(exc)])
report["imported"], report["failed"] = imported, failed
imported_state = snapshot()
report["changed_by_import"] = changes(before, imported_state)

from chexnet.imaging import DecodeLimits, decode_image
from chexnet.imaging.dicom import NotConfigured

try:
    decode_image(plain_path.read_bytes(), DecodeLimits())
    report["read_before_configure"] = "read"
except NotConfigured as exc:
    report["read_before_configure"] = f"refused: {exc}"
report["generator_untouched_by_refusal"] = pydicom.filereader.data_element_generator is generator

chexnet.configure()
configured = snapshot()
report["changed_by_configure"] = changes(imported_state, configured)
report["new_warning_filters"] = [f for f in configured["warnings.filters"]
                                 if f not in imported_state["warnings.filters"]]

from pydicom.pixels import get_decoder
from pydicom.uid import JPEGExtended12Bit, JPEGLossless
from chexnet.runtime import RedactQuoted

report["plugins"] = {uid.name: list(decoder._available) for uid, (decoder, _) in _PIXEL_DATA_DECODERS.items()}
report["plugins_before"] = {key[len("decoder "):]: value for key, value in before.items() if key.startswith("decoder ")}
report["redacted"] = sorted(name for name in WATCHED_LOGGERS
                            if any(isinstance(f, RedactQuoted) for f in logging.getLogger(name).filters))
report["levels"] = {name: logging.getLevelName(logging.getLogger(name).level) for name in WATCHED_LOGGERS}
wrapper = pydicom.filereader.data_element_generator
report["generator_wraps_original"] = wrapper is not generator and generator in [
    cell.cell_contents for cell in wrapper.__closure__ or ()]

image = decode_image(plain_path.read_bytes(), DecodeLimits())
report["read_after_configure"] = list(image.pixels.shape)
try:
    decode_image(bomb_path.read_bytes(), DecodeLimits())
    report["nested_bomb"] = "read"
except Exception as exc:
    report["nested_bomb"] = f"{type(exc).__name__}: {exc}"

chexnet.configure()
report["changed_by_configure_again"] = changes(configured, snapshot())
print(json.dumps(report))
"""

# The syntaxes GDCM is kept away from, by keyword and by the name pydicom gives them.
NAMES = {
    "JPEGBaseline8Bit": "JPEG Baseline (Process 1)",
    "JPEGExtended12Bit": "JPEG Extended (Process 2 and 4)",
    "JPEGLSLossless": "JPEG-LS Lossless Image Compression",
    "JPEGLSNearLossless": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "JPEG2000Lossless": "JPEG 2000 Image Compression (Lossless Only)",
    "JPEG2000": "JPEG 2000 Image Compression",
}


def _probe(tmp_path) -> dict:
    plain, bomb = tmp_path / "plain.dcm", tmp_path / "nested_bomb.dcm"
    plain.write_bytes(make_dicom(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)))
    bomb.write_bytes(hostile_files.nested_element_bomb(25_000))
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT), str(plain), str(bomb)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_importing_every_module_changes_nothing_and_configure_makes_exactly_the_intended_changes(tmp_path):
    report = _probe(tmp_path)

    # Importing: every module, nothing changed outside chexnet.
    assert report["failed"] == []
    assert {
        "chexnet.imaging.dicom",
        "chexnet.dicom_results",
        "chexnet.dicom_node.receiving",
        "chexnet.api.app",
        "chexnet.cli",
        "chexnet.runtime",
    } <= set(report["imported"])
    assert report["changed_by_import"] == {}
    # Reading before configure() is refused, and the refusal installs nothing.
    assert report["read_before_configure"].startswith("refused: chexnet.configure() has not been called")
    assert report["generator_untouched_by_refusal"] is True

    # configure(): these changes and no others (root logger, pynetdicom and pydicom's config untouched).
    changed = set(report["changed_by_configure"])
    assert {key for key in changed if not key.startswith("decoder ")} == {
        "warnings.filters",
        "logger pydicom",
        "logger pydicom.pixels.decoders.base",
        "logger highdicom",
        "pydicom.filereader.data_element_generator",
    }
    assert (
        {f"decoder {NAMES['JPEGExtended12Bit']}"}
        <= {key for key in changed if key.startswith("decoder ")}
        <= {f"decoder {NAMES[keyword]}" for keyword in NAMES}
    )
    assert report["new_warning_filters"] == [
        "('ignore', None, <class 'Warning'>, re.compile('highdicom(\\\\.|$)'), 0)",
        "('ignore', None, <class 'Warning'>, re.compile('pydicom(\\\\.|$)'), 0)",
    ]
    assert report["redacted"] == ["highdicom", "pydicom"]
    assert report["levels"] == {
        "pydicom": "WARNING",
        "pydicom.pixels.decoders.base": "CRITICAL",  # pydicom: its own
        "highdicom": "WARNING",
        "pynetdicom": "NOTSET",
    }
    plugins = report["plugins"]
    assert plugins["JPEG Extended (Process 2 and 4)"][-1] == "chexnet-imagecodecs"
    before = report["plugins_before"]
    for keyword in NAMES:
        assert "gdcm" not in plugins[NAMES[keyword]], keyword
    lossless = "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"
    if "'gdcm'" in before[lossless]:  # GDCM installed: it was offered the others, and keeps JPEG lossless
        assert "'gdcm'" in before[NAMES["JPEGBaseline8Bit"]] and "gdcm" in plugins[lossless]
        assert {f"decoder {NAMES[k]}" for k in NAMES} <= changed
    assert report["generator_wraps_original"] is True

    # The element budget is in force for reads after configure(), at any depth.
    assert report["read_after_configure"] == [64, 64]
    assert report["nested_bomb"].startswith("InvalidImage: The DICOM data set has more than 20,000 elements")

    assert report["changed_by_configure_again"] == {}
