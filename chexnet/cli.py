"""``python -m chexnet``: bundle demo|build, predict, calibrate, serve, dicom-node (DESIGN.md "Command line")."""

import argparse
import base64
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from chexnet.bundle.manifest import DEFAULT_MAX_DELTA, VARIANT_PRECISIONS
from chexnet.engines import DEFAULT_ENGINE, DEVICES, ENGINES, PRECISIONS
from chexnet.errors import ServiceError
from chexnet.heatmap import FORMATS
from chexnet.runtime import configure

Command = Callable[[argparse.Namespace], int]


def _variants(args: argparse.Namespace):
    from chexnet.bundle.variants import VariantRequest

    if not args.precision:
        return None
    if not args.calibration:
        raise SystemExit("error: --precision needs --calibration DIR (images to measure the variant on).")
    return VariantRequest(tuple(dict.fromkeys(args.precision)), Path(args.calibration), args.max_delta)


def _bundle_demo(args: argparse.Namespace) -> int:
    from chexnet.bundle.build import write_demo_bundle

    out = write_demo_bundle(
        args.out,
        args.labels,
        seed=args.seed,
        input_size=args.input_size,
        bundle_id=args.id,
        version=args.version,
        variants=_variants(args),
    )
    print(f"demo bundle written to {out}", file=sys.stderr)
    return 0


def _bundle_build(args: argparse.Namespace) -> int:
    from chexnet.bundle.build import write_bundle
    from chexnet.bundle.checkpoint import read_checkpoint
    from chexnet.labels import apply_thresholds, load_labels

    labels = load_labels(args.labels)
    if args.thresholds:
        labels = apply_thresholds(labels, args.thresholds)
    out = write_bundle(
        args.out,
        read_checkpoint(args.checkpoint),
        labels,
        bundle_id=args.id,
        version=args.version,
        input_size=args.input_size,
        demo=False,
        variants=_variants(args),
        description=args.description or f"Built from {Path(args.checkpoint).name}.",
    )
    print(f"bundle {args.id} {args.version} written to {out}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from chexnet.bundle import load_bundle
    from chexnet.engines import create_engine
    from chexnet.options import PredictOptions
    from chexnet.predictor import Predictor
    from chexnet.triage import PriorityRulesError, Triage, parse_rules, unknown

    try:  # the same rules as the service's CHEXNET_PRIORITY_RULES, checked against this bundle
        rules = parse_rules(args.priority_rules, "--priority-rules")
    except PriorityRulesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Heatmaps are made by default only where they have somewhere to go.
    options = PredictOptions.parse(
        heatmaps=args.heatmaps or ("top" if args.heatmaps_dir else "none"), heatmap_format=args.heatmap_format
    )
    bundle = load_bundle(args.bundle)
    # One bundle here, where the service loads several (the same CHEXNET_PRIORITY_RULES serves both): a rule
    # scoped to this bundle must name one of its codes; the others that do not apply to it are only noted.
    mistakes = unknown(
        [r for r in rules if r.model == bundle.id], {bundle.id: bundle.manifest.codes}, "--priority-rules"
    )
    if mistakes:
        print(f"error: {' '.join(mistakes)}", file=sys.stderr)
        return 2
    triage = Triage.for_model(rules, bundle.id, bundle.manifest.codes)
    for rule in [r for r in rules if r not in triage.rules]:
        print(f"note: --priority-rules rule '{rule.text}' does not apply to bundle {bundle.id}.", file=sys.stderr)
    thresholds = "bundle"
    if args.site_thresholds:  # as the service applies CHEXNET_SITE_THRESHOLDS (predict runs fp32)
        from chexnet.site_thresholds import apply_site_thresholds, read_site_thresholds

        site = read_site_thresholds(args.site_thresholds)
        if site.bundle.id == bundle.id:  # another bundle's file leaves this one's thresholds, as in the service
            bundle, thresholds = apply_site_thresholds(site, bundle, "fp32", args.site_thresholds), site.tag
        else:
            print(
                f"note: {args.site_thresholds} is for {site.bundle.id}; {bundle.id}'s own thresholds decide",
                file=sys.stderr,
            )
    engine = create_engine(bundle, args.engine, args.device)
    predictor = Predictor(bundle, engine, triage=triage, thresholds=thresholds)
    predictor.heatmap_selector(options.heatmaps)  # an unknown label code stops here, before any image
    out_dir = Path(args.heatmaps_dir) if args.heatmaps_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in map(Path, args.images):
        try:
            prediction = predictor.predict(path.read_bytes, options)
            result = {**prediction.summary(), "heatmaps": _heatmaps(prediction, path, out_dir)}
        except ServiceError as exc:
            failures += 1
            result = {"error": {"code": exc.code, "message": exc.message}}
        except OSError as exc:
            failures += 1
            result = {"error": {"code": "unreadable_file", "message": f"Cannot read {path}: {exc.strerror}."}}
        print(json.dumps({"file": str(path), **result}, ensure_ascii=False), flush=True)
    return 1 if failures else 0


def _resamples(text: str) -> int:
    value = int(text)
    if not 100 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 100 to 100000 resamples, not {text}")
    return value


def _calibrate(args: argparse.Namespace) -> int:
    from chexnet.calibration.run import calibrate

    thresholds, report = calibrate(
        args.bundle,
        args.images,
        args.labels,
        args.target,
        args.out,
        engine=args.engine,
        device=args.device,
        precision=args.precision,
        resamples=args.bootstrap,
        seed=args.seed,
    )
    print(f"site thresholds written to {thresholds}, report to {report}", file=sys.stderr)
    return 0


def _not_here(args: argparse.Namespace) -> int:
    print(f"error: '{args.command}' is started by python -m chexnet (chexnet/__main__.py)", file=sys.stderr)
    return 2


def _heatmaps(prediction, source: Path, out_dir: Path | None) -> list[dict]:
    """Overlay files in out_dir (their paths in the JSON), or base64 in the JSON line without one."""
    listed = []
    for heatmap in prediction.heatmaps:
        code, overlay = heatmap.label.code, heatmap.rendered
        item = {"code": code, "mime": overlay.mime, "width": overlay.width, "height": overlay.height}
        if out_dir:
            target = out_dir / f"{source.stem}.{code}.{'jpg' if overlay.mime == 'image/jpeg' else 'png'}"
            target.write_bytes(overlay.data)
            item["path"] = str(target)
        else:
            item["data"] = base64.b64encode(overlay.data).decode("ascii")
        listed.append(item)
    return listed


def _delta(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text}")
    return value


def _variant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        action="append",
        choices=VARIANT_PRECISIONS,
        help="add a validated variant (repeatable; needs --calibration): bf16/int8 for OpenVINO, measured "
        "against fp32 now; fp16 for the torch engine, whose calibration images are kept for the service to "
        "measure fp16 on its own GPU at start-up",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="PNG/JPEG/DICOM images to quantize on and to measure each variant against fp32",
    )
    parser.add_argument(
        "--max-delta",
        type=_delta,
        default=DEFAULT_MAX_DELTA,
        help=f"largest probability difference from fp32 a variant may have (default {DEFAULT_MAX_DELTA})",
    )


def build_parser(services: Mapping[str, Command] | None = None) -> argparse.ArgumentParser:
    """services: what starts 'serve' and 'dicom-node' (chexnet/__main__.py gives the transports' own); the CLI
    imports neither transport."""
    services = services or {}
    parser = argparse.ArgumentParser(prog="python -m chexnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bundle = commands.add_parser("bundle", help="create model bundles").add_subparsers(
        dest="bundle_command", required=True
    )
    demo = bundle.add_parser("demo", help="a DEMO bundle with seeded random weights (not for diagnosis)")
    demo.add_argument("--labels", required=True, choices=("cxr10", "cxr25", "chestxray14"))
    demo.add_argument("--out", required=True, help="bundle directory to create, e.g. models/cxr10")
    demo.add_argument("--id", help="bundle id (default: the --out directory name)")
    demo.add_argument("--version", default="0.0.0-demo")
    demo.add_argument("--input-size", type=int, default=224)
    demo.add_argument("--seed", type=int, default=0)
    _variant_options(demo)
    demo.set_defaults(func=_bundle_demo)

    build = bundle.add_parser("build", help="a bundle from a customer checkpoint")
    build.add_argument("--checkpoint", required=True, help=".pth or .pth.tar (state_dict, DataParallel, legacy names)")
    build.add_argument("--labels", required=True, help="cxr10|cxr25|chestxray14 or a LABELS.json file")
    build.add_argument("--id", required=True)
    build.add_argument("--version", required=True)
    build.add_argument("--input-size", type=int, default=224)
    build.add_argument("--thresholds", help="JSON object {label code: threshold}")
    build.add_argument("--description")
    build.add_argument("--out", required=True)
    _variant_options(build)
    build.set_defaults(func=_bundle_build)

    predict = commands.add_parser("predict", help="findings for images, one JSON object per line")
    predict.add_argument("--bundle", required=True)
    predict.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default=os.environ.get("CHEXNET_ENGINE") or DEFAULT_ENGINE,
        help=f"default: CHEXNET_ENGINE (each image sets it), else {DEFAULT_ENGINE}",
    )
    predict.add_argument("--device", choices=DEVICES, default="auto")
    predict.add_argument(
        "--site-thresholds",
        metavar="FILE",
        default=os.environ.get("CHEXNET_SITE_THRESHOLDS") or None,
        help="python -m chexnet calibrate's site-thresholds.json for this bundle (default: CHEXNET_SITE_THRESHOLDS); "
        "each JSON line's model.thresholds names it",
    )
    predict.add_argument("--heatmaps-dir", help="write heatmap overlays here (the JSON gives their paths)")
    predict.add_argument(
        "--heatmaps",
        help="none|top|positive|all|code1,code2: default top with --heatmaps-dir, "
        "else none; without --heatmaps-dir they are base64 in the JSON line",
    )
    predict.add_argument("--heatmap-format", choices=tuple(FORMATS), default="jpeg")
    predict.add_argument(
        "--priority-rules",
        default=os.environ.get("CHEXNET_PRIORITY_RULES") or "",
        help="triage rules [model:]code>=probability:urgent|stat, comma-separated (default: CHEXNET_PRIORITY_RULES); "
        "each JSON line's priority says which raised it",
    )
    predict.add_argument("--json", action="store_true", help="JSON lines on stdout (the only output format)")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.set_defaults(func=_predict)

    calibrate = commands.add_parser(
        "calibrate",
        help="site thresholds from the site's labelled images: site-thresholds.json (CHEXNET_SITE_THRESHOLDS) "
        "and an HTML report",
    )
    calibrate.add_argument("--bundle", required=True)
    calibrate.add_argument("--images", required=True, metavar="DIR", help="the site's PNG/JPEG/DICOM images")
    calibrate.add_argument(
        "--labels",
        required=True,
        metavar="CSV",
        help="a column 'image' (file in DIR) and one 0/1 column per label code",
    )
    calibrate.add_argument(
        "--target",
        action="append",
        default=[],
        required=True,
        help="sensitivity=0.90 | specificity=0.95 | youden for every class, or code:sensitivity=0.95 for one "
        "(repeatable)",
    )
    calibrate.add_argument("--out", default=".", help="folder for site-thresholds.json and calibration-report.html")
    calibrate.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default=os.environ.get("CHEXNET_ENGINE") or DEFAULT_ENGINE,
        help=f"as the service will run it: default CHEXNET_ENGINE, else {DEFAULT_ENGINE}",
    )
    calibrate.add_argument("--device", choices=DEVICES, default=os.environ.get("CHEXNET_DEVICE") or "auto")
    calibrate.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("CHEXNET_PRECISION") or "fp32",
        help="as the service will run it (default CHEXNET_PRECISION, else fp32); the service refuses the file in another",
    )
    calibrate.add_argument(
        "--bootstrap",
        type=_resamples,
        default=1000,
        metavar="N",
        help="bootstrap resamples, 100 to 100000 (default 1000)",
    )
    calibrate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    calibrate.set_defaults(func=_calibrate)

    serve = commands.add_parser("serve", help="the REST API on waitress (settings from CHEXNET_* variables)")
    serve.add_argument("--host", help="listen address (default CHEXNET_HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default CHEXNET_PORT or 8080)")
    serve.set_defaults(func=services.get("serve", _not_here))

    node = commands.add_parser(
        "dicom-node",
        help="the DICOM listener (C-ECHO, C-STORE) that sends back an SR "
        "and heatmap captures (settings from CHEXNET_* and CHEXNET_DICOM_* variables)",
    )
    node.set_defaults(func=services.get("dicom-node", _not_here))
    return parser


def main(argv: list[str] | None = None, services: Mapping[str, Command] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    configure()  # pydicom and highdicom as the product needs them, before any command reads DICOM
    args = build_parser(services).parse_args(argv)
    try:
        return args.func(args)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
