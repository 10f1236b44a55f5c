"""Shared fixtures. Sample radiographs come from ../shared/data (never copied into the repo);
tests that need them skip with a reason when it is absent (CI always has it)."""

from pathlib import Path

import pytest

import chexnet
from sample_data import DICOM, NIH, RGBA_PNGS

chexnet.configure()  # as every entry point does (test_import_side_effects: importing alone changes nothing)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"sample data {path} is absent (it sits in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    return _require(NIH)


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    return _require(DICOM)


@pytest.fixture(scope="session")
def nih_sample(nih_dir) -> list[Path]:
    """A few grayscale PNGs plus both RGBA files."""
    plain = sorted(p for p in nih_dir.glob("*.png") if p.name not in RGBA_PNGS)[:4]
    return plain + [nih_dir / name for name in RGBA_PNGS]


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """A cxr10 demo bundle built once per session (bundle demo, 224 px)."""
    from chexnet.bundle import load_bundle
    from chexnet.bundle.build import write_demo_bundle

    return load_bundle(write_demo_bundle(tmp_path_factory.mktemp("bundles") / "cxr10", "cxr10"))


@pytest.fixture(scope="session")
def onnx_engine(demo_bundle):
    from chexnet.engines import create_engine

    return create_engine(demo_bundle, "onnxruntime", "cpu")


@pytest.fixture(scope="session")
def torch_engine(demo_bundle):
    from chexnet.engines import create_engine

    return create_engine(demo_bundle, "torch", "cpu")


@pytest.fixture(scope="session")
def onnx_predictor(demo_bundle, onnx_engine):
    from chexnet.predictor import Predictor

    return Predictor(demo_bundle, onnx_engine)


@pytest.fixture(scope="module")
def env(tmp_path_factory, demo_bundle):
    """A configured API (demo bundle, vendor key, host identity) per test module."""
    from api_helpers import make_env

    return make_env(tmp_path_factory.mktemp("api"), demo_bundle.path)


@pytest.fixture(scope="module")
def app(env):
    from api_helpers import ready_app

    return ready_app(env)


@pytest.fixture()
def dicom_site(tmp_path, demo_bundle, request):
    """The DICOM node's site: an API env, the node (not started; indirect parameters are extra settings) and
    the destination PACS stand-in (not started); both stopped afterwards."""
    from api_helpers import make_env
    from dicom_node_helpers import Destination, Node, free_port

    env = make_env(tmp_path, demo_bundle.path)
    destination = Destination(free_port())
    node = Node(env, tmp_path, destination.port, **getattr(request, "param", {}))
    yield env, node, destination
    node.stop()
    destination.stop()
