"""Write bundles: ``bundle demo`` (seeded random weights) and ``bundle build`` (customer checkpoint).

Nothing reaches ``--out`` until the ONNX export agrees with PyTorch and every requested bf16/int8
variant is within its bound (chexnet.bundle.variants; fp16 keeps its calibration inputs, for the service
to measure at start-up): the bundle is assembled in a temporary sibling directory, checked, then renamed
into place.
"""

import datetime as dt
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from chexnet.bundle.manifest import MANIFEST, MODEL_ONNX, WEIGHTS_PT, FileEntry, Label, Manifest, sha256_file
from chexnet.bundle.variants import BuiltVariants, VariantRequest, build_variants
from chexnet.errors import BundleError
from chexnet.labels import load_labels
from chexnet.model import CheXNet

PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 17


def demo_state_dict(num_classes: int, seed: int) -> dict:
    torch.manual_seed(seed)
    return CheXNet(num_classes).state_dict()


def write_demo_bundle(
    out: str | Path,
    label_set: str,
    *,
    seed: int = 0,
    input_size: int = 224,
    bundle_id: str | None = None,
    version: str = "0.0.0-demo",
    variants: VariantRequest | None = None,
) -> Path:
    """torchvision densenet121 with seeded random weights, marked demo everywhere."""
    labels = load_labels(label_set)
    return write_bundle(
        out,
        demo_state_dict(len(labels), seed),
        labels,
        bundle_id=bundle_id or Path(out).name,
        version=version,
        input_size=input_size,
        demo=True,
        variants=variants,
        description=f"DEMO: densenet121 with seeded random weights (seed {seed}), label set {label_set}. "
        "Untrained; not for diagnosis.",
    )


def write_bundle(
    out: str | Path,
    state: dict,
    labels: list[Label],
    *,
    bundle_id: str,
    version: str,
    input_size: int,
    demo: bool,
    description: str,
    variants: VariantRequest | None = None,
) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} already exists and is not empty; choose another --out or remove it.")
    model = CheXNet(len(labels)).eval()
    check_keys(model.state_dict(), state, len(labels))
    model.load_state_dict(state, strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the service may run as another user
    try:
        torch.save(model.state_dict(), staging / WEIGHTS_PT)
        export_onnx(model, staging / MODEL_ONNX, input_size)
        check_parity(model, staging / MODEL_ONNX, input_size)
        files, built = [WEIGHTS_PT, MODEL_ONNX], BuiltVariants({}, {}, [])
        if variants and variants.precisions:
            built = build_variants(
                staging,
                labels,
                input_size,
                Manifest.model_fields["mean"].default,
                Manifest.model_fields["std"].default,
                variants,
            )
            files += built.files
        manifest = Manifest(
            id=bundle_id,
            version=version,
            input_size=input_size,
            labels=labels,
            demo=demo,
            created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            description=description,
            variants=built.variants,
            startup_variants=built.startup_variants,
            files={
                name: FileEntry(sha256=sha256_file(staging / name), bytes=(staging / name).stat().st_size)
                for name in files
            },
        )
        (staging / MANIFEST).write_text(
            json.dumps(manifest.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def export_onnx(model: CheXNet, path: Path, input_size: int) -> None:
    dummy = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript; the
        # graph here is a plain CNN that the TorchScript exporter handles exactly.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=["logits", "features"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def check_parity(model: CheXNet, onnx_path: Path, input_size: int) -> float:
    """Run both runtimes on the same inputs; refuse the bundle if probabilities differ > 1e-4."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, input_size, input_size)).astype(np.float32)
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits, _ = session.run(["logits", "features"], {"input": x})
    diff = float(np.abs(torch.sigmoid(logits).numpy() - 1 / (1 + np.exp(-onnx_logits))).max())
    if not diff <= PARITY_TOLERANCE:
        raise BundleError(
            f"ONNX Runtime and PyTorch disagree by {diff:.2e} (limit {PARITY_TOLERANCE}); bundle not written."
        )
    return diff


def check_keys(expected: dict, state: dict, num_labels: int) -> None:
    """One sentence naming what does not fit, instead of PyTorch's multi-line load error."""
    if "classifier.weight" in state and state["classifier.weight"].shape[0] != num_labels:
        raise BundleError(
            f"The checkpoint's classifier has {state['classifier.weight'].shape[0]} outputs "
            f"but {num_labels} labels were given; pass the label set the model was trained with."
        )
    # Checkpoints from PyTorch < 0.4 have no BatchNorm num_batches_tracked; inference never reads it.
    for key in set(expected) - set(state):
        if key.endswith(".num_batches_tracked"):
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = [
        f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise BundleError("The checkpoint is not a densenet121 state_dict (" + "; ".join(problems) + ").")
