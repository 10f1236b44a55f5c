"""What the service may hold in memory at worst, from its settings (DESIGN.md "Resource bounds").

Each size setting is bounded alone, yet together they can overrun the container: three legal
256-megapixel deflated DICOMs at once took 4.1 GiB against a 3 GiB compose limit. So at start the
settings are added up here and compared with the memory the process is given (``chexnet.cpu``). The
figures are measured by ``bench/memory_model.py`` (BENCHMARKS.md, "Memory model of the start-up check":
AMD EPYC, 2 cores, Python 3.11) and rounded up; the same run checks the sum, with the defaults under
worst-case uploads peaking at 2100 MiB against an estimate of 2777 MiB.
"""

from dataclasses import dataclass

MIB = 2**20
GIB = 2**30

# The runtime and each loaded bundle, resident after warm-up traffic (8 clients, heatmaps=all, 1 engine
# worker, 8 waitress threads): onnxruntime one bundle 523 MiB, all three demo bundles 799 MiB
# (runtime ~345, ~140 per bundle); openvino 514 / 836 MiB, and 1037 MiB for three with 2 workers under
# 16 clients (~215 per bundle). torch, measured the same way by hand on the CPU: cxr10 alone 1134 MiB,
# three 1293 MiB (runtime ~1050, ~80 per bundle); CUDA's own host memory comes on top on a GPU, where
# the GPU compose file gives 12g.
RUNTIME_MIB = {"onnxruntime": 350, "openvino": 350, "torch": 1100}
BUNDLE_MIB = {"onnxruntime": 160, "openvino": 220, "torch": 90}
# ONNX Runtime's second session per bundle for a request alone in the service (chexnet.cpu.lone_threads),
# resident after warm-up calls on both sessions: 280 against 221 MiB for cxr10 alone, 594 against 410 for all
# three demo bundles (AMD EPYC family 25, 2 cores, onnxruntime 1.31; ~61 per bundle).
LONE_SESSION_MIB = {"onnxruntime": 64}
# Activations of each engine call running at once, per bundle, at batch 1 (the CPU default; the GPU
# image's batches live in GPU memory): one bundle with 8 engine workers held 91 MiB more than with 1.
ENGINE_CALL_MIB = 13

# One decode at its peak = UPLOAD_COPIES x the upload + DECODE_BYTES_PER_PIXEL x the pixel limit.
# Measured at 16 MP (bytes per pixel above the upload already held): JPEG 2000 16-bit 5.4 with a tiny
# codestream (OpenJPEG's 32-bit working image, the 16-bit frame, then the 8-bit display image), 9.2 to
# 11.4 with a codestream of 1.6 B/px (up to 3.7 more copies of it: the data set's pixel data, the
# frame, the codec's input); deflated 4.4 (the inflated data set, at most 2 B/px + 1 MiB, and its pixel
# data); RLE 5.3, JPEG-LS 6.5 with a 1.6 B/px codestream, 16-bit PNG 3.3, uncompressed 16-bit 2.3; float
# pixel data holds two copies of the upload. Colour (3-sample) DICOMs are not covered: their luminance
# step makes a float copy of every sample (27 B/px for JPEG baseline), a decoder fault to fix in
# chexnet/imaging/dicom.py rather than to budget (test_memory_budget.py keeps it as an expected failure).
# The same deflated 9 MP file measured 6.1 to 7.3 B/px from one fresh interpreter to the next (the
# allocator's state varies), so the figure is 8, not the lowest reading.
DECODE_BYTES_PER_PIXEL = 8
UPLOAD_COPIES = 5  # the upload itself and up to four copies of what it carries
# A request past its decode keeps its 8-bit display image (up to 1 B/px) for the heatmaps, plus the
# heatmaps, the response body and form parsing: ~15 MiB per waitress thread with heatmaps=all across
# the three demo bundles (32 threads held 362 MiB more than 8), counted twice over.
REQUEST_MIB = 32
# waitress keeps, per open connection, up to this much of a request body, its headers and the pending
# response in memory before it spools them to a temporary file (waitress.adjustments defaults).
WAITRESS_CONNECTIONS = 200  # connection_limit of `python -m chexnet serve`
# recv_bytes of `python -m chexnet serve`: waitress's default 8 KiB made a 7 MiB DICOM upload ~900 reads, each
# appended to the body's buffer file by its own seek and write (bench/request_cost.py, BENCHMARKS.md)
WAITRESS_RECV_BYTES = 64 * 1024
# inbuf_overflow (passed once the last read) + max_request_header_size + outbuf_overflow
WAITRESS_BUFFER_BYTES = 512 * 1024 + WAITRESS_RECV_BYTES + 256 * 1024 + MIB


@dataclass(frozen=True)
class MemoryEstimate:
    """The worst case, in bytes, part by part."""

    base: int  # runtime, loaded bundles and the activations of the engine calls at once
    bundles: int
    decodes: int
    per_decode: int
    requests_past_decode: int
    per_request: int
    buffers: int  # waitress's connection buffers (the HTTP API only)

    @property
    def total(self) -> int:
        return self.base + self.decodes * self.per_decode + self.requests_past_decode * self.per_request + self.buffers

    def describe(self) -> str:
        parts = [f"{_count(self.decodes, 'decode')} at once at {gib(self.per_decode)} each"]
        if self.requests_past_decode:
            parts.append(
                f"{_count(self.requests_past_decode, 'request')} past decoding at {gib(self.per_request)} each"
            )
        parts.append(f"{gib(self.base)} for the runtime and {_count(self.bundles, 'model bundle')}")
        if self.buffers:
            parts.append(f"{gib(self.buffers)} of connection buffers")
        return ", ".join(parts)


def gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def estimate(
    *,
    engine: str,
    bundles: int,
    max_pixels: int,
    max_upload_bytes: int,
    decodes: int,
    past_decode: int,
    engine_calls: int,
    http: bool,
    lone: bool = False,
) -> MemoryEstimate:
    """decodes: decode slots in use at once; past_decode: requests holding a decoded image outside a slot;
    engine_calls: forward passes at once; http: whether waitress's connection buffers count; lone: the engine
    keeps a configuration for a request alone in the service (Layout.lone_threads)."""
    per_bundle = BUNDLE_MIB.get(engine, max(BUNDLE_MIB.values())) + max(1, engine_calls) * ENGINE_CALL_MIB
    per_bundle += LONE_SESSION_MIB.get(engine, 0) if lone else 0
    base = (RUNTIME_MIB.get(engine, max(RUNTIME_MIB.values())) + bundles * per_bundle) * MIB
    return MemoryEstimate(
        base=base,
        bundles=bundles,
        decodes=decodes,
        per_decode=UPLOAD_COPIES * max_upload_bytes + DECODE_BYTES_PER_PIXEL * max_pixels,
        requests_past_decode=max(0, past_decode),
        per_request=max_pixels + REQUEST_MIB * MIB,
        buffers=WAITRESS_CONNECTIONS * WAITRESS_BUFFER_BYTES if http else 0,
    )
