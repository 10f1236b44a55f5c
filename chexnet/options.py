"""The options of one prediction, parsed once at the edge (CLI flags, form fields, query parameters)
into one typed object; the core checks heatmap codes against the model it runs."""

from dataclasses import dataclass

from chexnet.errors import InvalidOption
from chexnet.heatmap import FORMATS

HEATMAP_MODES = ("none", "top", "positive", "all")
HEATMAP_FORMATS = tuple(FORMATS)
OUTPUTS = ("json", "dicom", "fhir")  # dicom: an SR and a secondary capture per heatmap (DICOM input only);
# fhir: a FHIR R4 DiagnosticReport (chexnet.api.fhir), without heatmaps


@dataclass(frozen=True)
class PredictOptions:
    model: str | None = None  # bundle id; None: the service's default model
    heatmaps: str | tuple[str, ...] = "top"  # one of HEATMAP_MODES, or label codes
    heatmap_format: str = "jpeg"
    output: str = "json"  # one of OUTPUTS

    @classmethod
    def parse(
        cls,
        model: str | None = None,
        heatmaps: str | None = None,
        heatmap_format: str | None = None,
        output: str | None = None,
    ) -> "PredictOptions":
        spec = (heatmaps or "").strip() or "top"  # empty: the default, as a browser form sends it
        chosen: str | tuple[str, ...] = spec
        if spec not in HEATMAP_MODES:
            codes = tuple(c.strip() for c in spec.split(","))
            if not all(codes):
                raise InvalidOption(
                    f"heatmaps must be one of {', '.join(HEATMAP_MODES)} or a comma list of label codes, not {spec!r}."
                )
            chosen = codes
        fmt = heatmap_format or "jpeg"
        if fmt not in HEATMAP_FORMATS:
            raise InvalidOption(f"heatmap_format must be one of {', '.join(HEATMAP_FORMATS)}, not {fmt!r}.")
        out = output or "json"
        if out not in OUTPUTS:
            raise InvalidOption(f"output must be one of {', '.join(OUTPUTS)}, not {out!r}.")
        return cls(model=model or None, heatmaps=chosen, heatmap_format=fmt, output=out)
