"""DESIGN.md "Resource bounds", the sum of the bounds: settings that each pass alone but together need more
memory than the container is given stop the process at start with one sentence; the defaults fit the
compose limits; and the per-decode figure the check uses covers what the decoder really holds."""

import io
import os
import re
import subprocess
import sys
from dataclasses import replace

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

import chexnet.service.settings as settings_module
from chexnet.cpu import available_memory
from chexnet.imaging import DecodeLimits, decode_image
from chexnet.imaging.gate import default_concurrency
from chexnet.service.memory import MIB, estimate
from chexnet.service.settings import DICOM_NODE, HTTP_API, MAX_LICENSE_LEEWAY_S, Settings, SettingsError
from dicom_factory import make_dicom
from memory_helpers import peak_mib_above_now

GIB = 2**30
DEMO_BUNDLES = ("cxr10", "cxr25", "chestxray14")  # what the CPU image ships and compose loads by default


@pytest.fixture()
def site(tmp_path):
    """A models directory holding the three demo bundles (as the service counts them) and cgroup files."""
    models = tmp_path / "models"
    for name in DEMO_BUNDLES:
        (models / name).mkdir(parents=True)
        (models / name / "manifest.json").write_text("{}")
    env = {"CHEXNET_LICENSE_KEYS": str(tmp_path / "keys.pem"), "CHEXNET_MODELS_DIR": str(models)}
    return tmp_path, env


def cgroup(tmp_path, text: str, name: str = "memory.max"):
    path = tmp_path / name
    path.write_text(text + "\n")
    return [path]


# --- reading the limit -----------------------------------------------------------------------


def test_the_cgroup_memory_limit_is_read_v2_then_v1_else_physical_memory(tmp_path):
    physical = available_memory([tmp_path / "absent"])
    assert physical.bytes > 0 and "physical" in physical.source
    v2 = available_memory(cgroup(tmp_path, str(3 * GIB)))
    assert v2.bytes == 3 * GIB and "memory.max" in v2.source
    assert available_memory(cgroup(tmp_path, "max")) == physical  # v2 without a limit
    v1 = cgroup(tmp_path, "9223372036854771712", "memory.limit_in_bytes")  # v1 without a limit
    assert available_memory([tmp_path / "absent", *v1]) == physical
    v1[0].write_text(f"{2 * GIB}\n")
    assert available_memory([tmp_path / "absent", *v1]).bytes == 2 * GIB


# --- the attack: legal values that do not fit together ---------------------------------------


@pytest.mark.parametrize("workload", [HTTP_API, DICOM_NODE], ids=["api", "dicom-node"])
def test_256_megapixels_at_high_concurrency_under_3_gib_is_refused_at_start(site, workload):
    tmp_path, env = site
    attack = {**env, "CHEXNET_MAX_PIXELS": "256000000", "CHEXNET_DECODE_CONCURRENCY": "8"}  # each within its range
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(attack, workload=workload, memory_limit_files=cgroup(tmp_path, str(3 * GIB)))
    sentence = str(refused.value)
    for fragment in (
        "CHEXNET_MAX_PIXELS=256000000",
        "CHEXNET_MAX_UPLOAD_MB=64",
        "CHEXNET_DECODE_CONCURRENCY=8",
        "8 decodes at once",
        "more than the 3.0 GiB this process is given",
        "memory.max",
        "; lower CHEXNET_",
    ):
        assert fragment in sentence, sentence
    assert sentence.count(". ") == 0 and sentence.endswith("."), "one sentence"
    if workload is HTTP_API:
        assert "CHEXNET_THREADS=" in sentence and "connection buffers" in sentence


@pytest.mark.parametrize("command", ["serve", "dicom-node"])
def test_both_entry_points_stop_with_the_sentence(site, command):
    """The real machine (no cgroup file injected): values no machine here holds, exit status 2, one line."""
    _, env = site
    run = subprocess.run(
        [sys.executable, "-m", "chexnet", command],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            **env,
            "CHEXNET_MAX_PIXELS": "400000000",
            "CHEXNET_MAX_UPLOAD_MB": "1024",
            "CHEXNET_DECODE_CONCURRENCY": "64",
            "CHEXNET_THREADS": "512",
        },
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("error: CHEXNET_MAX_PIXELS=400000000") and "64 decodes at once" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_the_sentence_names_a_value_that_fits(site):
    tmp_path, env = site
    limit = cgroup(tmp_path, str(3 * GIB))
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(
            {**env, "CHEXNET_MAX_PIXELS": "256000000", "CHEXNET_DECODE_CONCURRENCY": "8"}, memory_limit_files=limit
        )
    suggested = re.search(r"lower CHEXNET_DECODE_CONCURRENCY to 1 and CHEXNET_MAX_PIXELS to (\d+)", str(refused.value))[
        1
    ]
    fits = Settings.from_env(
        {**env, "CHEXNET_MAX_PIXELS": suggested, "CHEXNET_DECODE_CONCURRENCY": "1"}, memory_limit_files=limit
    )
    assert fits.memory_estimate().total <= 3 * GIB
    with pytest.raises(SettingsError, match=r"lower CHEXNET_THREADS to \d+"):
        Settings.from_env({**env, "CHEXNET_THREADS": "512"}, memory_limit_files=limit)


# --- the defaults fit --------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2, 4, 16, 64])
@pytest.mark.parametrize(
    "workload, limit_gib", [(HTTP_API, 3), (DICOM_NODE, 2), (HTTP_API, 2)], ids=["api-3g", "dicom-node-2g", "api-2g"]
)
def test_the_defaults_fit_the_compose_limits_on_any_machine(site, monkeypatch, cores, workload, limit_gib):
    """deployment_template/docker-compose.yml: api mem_limit 3g, dicom-node 2g, no CPU limit (any host).
    What the cores would derive is lowered to what fits; nothing the operator set is changed."""
    tmp_path, env = site
    monkeypatch.setattr(settings_module, "available_cores", lambda: cores)
    settings = Settings.from_env(env, workload=workload, memory_limit_files=cgroup(tmp_path, str(limit_gib * GIB)))
    assert settings.memory_estimate(workload).total <= limit_gib * GIB
    layout = settings.layout
    assert 1 <= layout.decode_concurrency <= default_concurrency(cores)
    assert layout.http_threads > layout.decode_concurrency
    assert (settings.max_pixels, settings.max_upload_mb) == (40_000_000, 64)


def test_where_memory_is_short_a_lone_request_loses_its_second_session_first(site, monkeypatch):
    """2 cores, the three demo bundles on ONNX Runtime (compose's defaults): under 3 GiB a request alone in the
    service keeps both cores (a second session per bundle), paid for by the waitress threads that no engine worker
    or decode slot needed (8 → 7); with less it is given up next, before any decode slot."""
    tmp_path, env = site
    monkeypatch.setattr(settings_module, "available_cores", lambda: 2)
    roomy = Settings.from_env(env, memory_limit_files=cgroup(tmp_path, str(3 * GIB)))
    assert roomy.layout.lone_threads == 2 and roomy.memory_estimate().total <= 3 * GIB
    assert 2 * 2 + default_concurrency(2) <= roomy.layout.http_threads < 8
    busy = replace(roomy, threads=2 * 2 + default_concurrency(2)).memory_estimate().total  # with the second sessions
    limit = busy - 96 * MIB  # less than those three sessions' 192 MiB
    tight = Settings.from_env(env, memory_limit_files=cgroup(tmp_path, str(limit)))
    assert tight.layout.lone_threads == 0 and tight.memory_estimate().total <= limit
    assert tight.layout.decode_concurrency == default_concurrency(2)
    assert roomy.memory_estimate().base - replace(roomy, lone_engine=False).memory_estimate().base == 3 * 64 * MIB


def test_the_defaults_are_unchanged_where_memory_is_plenty(site):
    """This 24 GiB development machine (no cgroup limit): the layout the cores give, untouched."""
    tmp_path, env = site
    settings = Settings.from_env(env, memory_limit_files=cgroup(tmp_path, str(24 * GIB)))
    assert (settings.decode_concurrency, settings.threads) == (0, 0)
    layout = settings.layout
    assert layout.decode_concurrency == default_concurrency(layout.cores)
    assert layout.http_threads == max(8, 2 * layout.engine_workers + layout.decode_concurrency)


def test_settings_given_explicitly_are_kept_or_refused_never_lowered(site):
    tmp_path, env = site
    told = Settings.from_env(
        {**env, "CHEXNET_DECODE_CONCURRENCY": "2", "CHEXNET_THREADS": "6"},
        memory_limit_files=cgroup(tmp_path, str(3 * GIB)),
    )
    assert (told.layout.decode_concurrency, told.layout.http_threads) == (2, 6)
    with pytest.raises(SettingsError, match="CHEXNET_DECODE_CONCURRENCY=4"):
        Settings.from_env({**env, "CHEXNET_DECODE_CONCURRENCY": "4"}, memory_limit_files=cgroup(tmp_path, str(2 * GIB)))


# --- the licence leeway ------------------------------------------------------------------------


def test_the_licence_leeway_is_bounded_to_five_minutes(site):
    tmp_path, env = site
    limit = cgroup(tmp_path, str(24 * GIB))
    assert (
        Settings.from_env({**env, "CHEXNET_LICENSE_LEEWAY_S": "300"}, memory_limit_files=limit).license_leeway_s == 300
    )
    assert MAX_LICENSE_LEEWAY_S == 300
    for value in ("301", "3600"):
        with pytest.raises(SettingsError, match=f"CHEXNET_LICENSE_LEEWAY_S must be between 0 and 300, not {value}"):
            Settings.from_env({**env, "CHEXNET_LICENSE_LEEWAY_S": value}, memory_limit_files=limit)


# --- the per-decode figure against the decoder ---------------------------------------------------

SIDE = 3000  # 9 MP: large enough that the decoder's arrays dwarf the allocator's noise


def _reencode(data: bytes, syntax, frame: bytes | None = None) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    if frame is not None:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4096, (SIDE, SIDE), dtype=np.uint16)


def _smooth() -> np.ndarray:
    return (np.add.outer(np.arange(SIDE), np.arange(SIDE)) % 4096).astype(np.uint16)


def _rle() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(_smooth())))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


MONOCHROME = {
    "uncompressed 16-bit": lambda: make_dicom(_noise()),
    "deflated 16-bit": lambda: _reencode(make_dicom(_smooth()), DeflatedExplicitVRLittleEndian),
    "JPEG 2000 lossless 16-bit, noise": lambda: _reencode(
        make_dicom(_noise(), BitsStored=12),
        JPEG2000Lossless,
        imagecodecs.jpeg2k_encode(_noise(), level=0, codecformat="J2K", reversible=True, bitspersample=12),
    ),
    "RLE 16-bit": _rle,
}


def _per_decode_mib(data: bytes) -> float:
    return (
        estimate(
            engine="onnxruntime",
            bundles=0,
            max_pixels=SIDE * SIDE,
            max_upload_bytes=len(data),
            decodes=1,
            past_decode=0,
            engine_calls=0,
            http=False,
        ).per_decode
        / MIB
    )


def held_by_one_decode(name: str) -> tuple[float, int]:
    """(MiB one decode of MONOCHROME[name] held at its peak, the file's size), measured in this process."""
    data = MONOCHROME[name]()
    limits = DecodeLimits(max_bytes=len(data), max_pixels=SIDE * SIDE)
    decode_image(data, limits)  # codecs loaded, allocator warm
    peak, result = peak_mib_above_now(lambda: decode_image(data, limits))
    assert result.pixels.shape == (SIDE, SIDE), result
    return peak + len(data) / MIB, len(data)  # the upload was already held when the peak was reset


@pytest.mark.parametrize("name", sorted(MONOCHROME))
def test_the_per_decode_estimate_covers_what_the_decoder_holds(name):
    # In a fresh interpreter: the resident peak is the process's, and in a long test run other threads
    # (servers, loaders of earlier tests) and a fragmented heap would add to it.
    code = f"import chexnet, test_memory_budget as t; chexnet.configure(); print(*t.held_by_one_decode({name!r}))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    held, size = run.stdout.split()
    estimate_mib = _per_decode_mib(b"x" * int(size))
    assert float(held) <= estimate_mib, (
        f"{name}: the decode held {float(held):.0f} MiB, the estimate {estimate_mib:.0f}"
    )


@pytest.mark.xfail(
    strict=True,
    reason="the luminance step of a colour DICOM holds a float32 copy of every "
    "sample (19-27 B/px); to fix in chexnet/imaging/dicom.py, not to budget",
)
def test_a_colour_dicom_decodes_within_the_per_decode_estimate():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((SIDE, SIDE), np.uint8))))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    rgb = np.stack([(_smooth() % 256).astype(np.uint8)] * 3, axis=-1)
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(rgb, level=90)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    limits = DecodeLimits(max_bytes=len(data), max_pixels=SIDE * SIDE)
    decode_image(data, limits)
    peak, _ = peak_mib_above_now(lambda: decode_image(data, limits))
    assert peak + len(data) / MIB <= _per_decode_mib(data)
