"""Checks of the GPU image that need no GPU (issue 22, item 3). test/e2e.sh runs it inside the built image:

    docker run --rm -v "$PWD/test/gpu_image_check.py:/check.py:ro" chexnet-api-gpu:VERSION python /check.py

1. **arch list**: the image's torch holds kernels for sm_75 (RTX 2080 Ti) and sm_90 (H100/H200). Read from
   ``torch._C._cuda_getArchFlags()``: ``torch.cuda.get_arch_list()`` returns [] where no GPU is visible.
2. **ldd**: every shared library that torch's libraries (libtorch_cuda.so among them) and the bundled
   ``nvidia-*`` wheels' libraries need resolves, except the driver's own (``libcuda.so.1``, put into the
   container by the NVIDIA container toolkit) and plugins for networks a single-GPU service never uses.
3. **opened by name**: the libraries that cuDNN, cuBLAS, NVRTC, cuFFT and torch ``dlopen`` by name at first
   use (:data:`BY_NAME`) are still named in their opener (so the table is true of this build), are found
   as the dynamic loader finds them from that opener in a process that has imported torch (a library of
   that name already loaded: ``import torch`` preloads NVRTC, cuBLAS, cuDNN and others from the wheels for
   exactly this; else LD_LIBRARY_PATH, the opener's RUNPATH with ``$ORIGIN``, the ld.so cache, /lib and
   /usr/lib), and ldd resolves their own needs.

Standard library only, besides the torch it checks. Prints one line per check and a JSON summary as the last
line; exits 1 if any check fails. ``--site DIR`` checks another site-packages (the tests use the
development virtualenv's, which holds the same wheels).
"""

import argparse
import glob
import json
import mmap
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_ARCHS = ("sm_75", "sm_90")  # RTX 2080 Ti (Turing); H100/H200 (Hopper)
DRIVER_LIBRARIES = ("libcuda.so.1",)  # the host driver's, mounted by the NVIDIA container toolkit
# Plugins for multi-node networking (MPI, PMIx, UCX, libfabric, InfiniBand) and GPUDirect Storage over RDMA:
# loaded only when such a network is configured, which a single-GPU inference service never does.
OPTIONAL_PLUGINS = re.compile(r"^(nvshmem_bootstrap_|nvshmem_transport_|libcufile_rdma\.)")

# (opener's file name, the name it passes to dlopen, the string it holds for it). cuDNN builds its
# sub-libraries' names from a stem and its major version ("libcudnn_ops.so" + ".9").
BY_NAME = (
    ("libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_graph.so"),
    ("libcudnn.so.9", "libcudnn_ops.so.9", "libcudnn_ops.so"),
    ("libcudnn.so.9", "libcudnn_cnn.so.9", "libcudnn_cnn.so"),
    ("libcudnn.so.9", "libcudnn_adv.so.9", "libcudnn_adv.so"),
    ("libcudnn_graph.so.9", "libcudnn_engines_precompiled.so.9", "libcudnn_engines_precompiled.so"),
    ("libcudnn_graph.so.9", "libcudnn_engines_runtime_compiled.so.9", "libcudnn_engines_runtime_compiled.so"),
    ("libcudnn_graph.so.9", "libcudnn_heuristic.so.9", "libcudnn_heuristic.so"),
    ("libcudnn_graph.so.9", "libnvrtc.so.12", "libnvrtc.so"),
    ("libcublasLt.so.12", "libnvrtc.so.12", "libnvrtc.so.12"),
    ("libnvrtc.so.12", "libnvrtc-builtins.so.12.8", "libnvrtc-builtins.so.12.8"),
    ("libcufft.so.11", "libnvrtc.so.12", "libnvrtc.so.12"),
    ("libcufft.so.11", "libnvJitLink.so.12", "libnvJitLink.so.12"),
    ("libcusparseLt.so.0", "libnvrtc.so.12", "libnvrtc.so.12"),
    ("libtorch_cuda.so", "libtorch_cuda_linalg.so", "libtorch_cuda_linalg.so"),
)

_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_SONAME, _DT_RUNPATH = 1, 5, 15, 14, 29


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        (self.passed if ok else self.failures).append(what)
        print(("ok    " if ok else "FAIL  ") + what, flush=True)


# --- ELF: what the dynamic loader reads ------------------------------------------------------------
@dataclass(frozen=True)
class Dynamic:
    needed: tuple[str, ...]
    runpath: tuple[str, ...]  # DT_RUNPATH, $ORIGIN expanded
    rpath: tuple[str, ...]  # DT_RPATH (used only where there is no RUNPATH)


def read_dynamic(path: Path) -> Dynamic:
    """DT_NEEDED, DT_RUNPATH and DT_RPATH of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:6] != b"\x7fELF\x02\x01":
            raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
        (phoff,) = struct.unpack_from("<Q", m, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", m, 0x36)
        loads, dynamic = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", m, phoff + i * phentsize)
            if p_type == 1:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return Dynamic((), (), ())
        entries = []
        for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
            tag, value = struct.unpack_from("<qQ", m, off)
            if tag == 0:
                break
            entries.append((tag, value))
        strtab = next(v for t, v in entries if t == _DT_STRTAB)
        strtab = next(off + strtab - vaddr for vaddr, off, size in loads if vaddr <= strtab < vaddr + size)

        def text(offset: int) -> str:
            return m[strtab + offset : m.find(b"\0", strtab + offset)].decode()

        origin = str(Path(path).resolve().parent)

        def paths(tag: int) -> tuple[str, ...]:
            return tuple(
                p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                for t, v in entries
                if t == tag
                for p in text(v).split(":")
                if p
            )

        return Dynamic(tuple(text(v) for t, v in entries if t == _DT_NEEDED), paths(_DT_RUNPATH), paths(_DT_RPATH))


def holds_string(path: Path, text: str) -> bool:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(text.encode() + b"\0") >= 0 or m.find(text.encode()) >= 0


def ld_cache() -> dict[str, str]:
    """The ld.so cache: library name → path (x86-64 entries)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines()[1:]:
        name, _, target = line.strip().partition(" => ")
        if "x86-64" in name or "x86_64" in name:
            found.setdefault(name.split(" (")[0], target)
    return found


def loaded_libraries() -> dict[str, str]:
    """The shared libraries this process has loaded: file name (the wheels name each by its soname) → path."""
    found = {}
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            if path.startswith("/") and ".so" in Path(path).name:
                found.setdefault(Path(path).name, path)
    return found


def dlopen_finds(opener: Path, name: str, cache: dict[str, str], loaded: dict[str, str]) -> str | None:
    """Where dlopen(name) called from opener finds the file, as glibc does (dlopen(3), ld.so(8)): a library of
    that name already loaded, else the search path; None if nowhere."""
    if name in loaded:
        return loaded[name]
    dyn = read_dynamic(opener)
    env = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    order = (env + list(dyn.runpath)) if dyn.runpath else (list(dyn.rpath) + env)
    for directory in order:
        if (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    if name in cache:
        return cache[name]
    for directory in ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
        if (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    return None


def unresolved(path: Path) -> list[str]:
    """The libraries ldd cannot find for path, less the driver's own."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    missing = [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]
    if out.returncode and not missing:
        missing = [f"ldd failed: {out.stderr.strip() or out.stdout.strip()}"]
    return [name for name in missing if name not in DRIVER_LIBRARIES]


# --- the checks ---------------------------------------------------------------------------------------
def check_archs(report: Report, arch_flags: str) -> None:
    archs = arch_flags.split()
    for arch in REQUIRED_ARCHS:
        report.check(arch in archs, f"torch is built for {arch} (its arch list: {' '.join(archs) or 'empty'})")


def libraries(site: Path) -> list[Path]:
    """torch's shared libraries and those of the bundled nvidia-* wheels."""
    found = glob.glob(str(site / "torch" / "lib" / "*.so*")) + glob.glob(str(site / "nvidia" / "*" / "lib" / "*.so*"))
    return sorted(Path(p) for p in found)


def check_ldd(report: Report, site: Path) -> None:
    libs = libraries(site)
    report.check(any(p.name == "libtorch_cuda.so" for p in libs), f"libtorch_cuda.so is in {site / 'torch' / 'lib'}")
    for path in libs:
        if OPTIONAL_PLUGINS.match(path.name):
            report.skipped.append(f"{path.name}: optional network plugin, never loaded by a single-GPU service")
            continue
        missing = unresolved(path)
        report.check(
            not missing, f"ldd {path.relative_to(site)}" + (f": not found {', '.join(missing)}" if missing else "")
        )


def check_by_name(report: Report, site: Path, table=BY_NAME) -> None:
    by_file = {p.name: p for p in libraries(site)}
    cache, loaded = ld_cache(), loaded_libraries()
    for opener_name, name, string in table:
        opener = by_file.get(opener_name)
        if opener is None:
            report.check(False, f"{opener_name} (which opens {name} by name) is in the image")
            continue
        report.check(holds_string(opener, string), f"{opener_name} names '{string}' (the table is true of this build)")
        where = dlopen_finds(opener, name, cache, loaded)
        missing = unresolved(Path(where)) if where else []
        report.check(
            where is not None and not missing,
            f"dlopen('{name}') from {opener_name} finds "
            + (
                f"{Path(where).relative_to(site) if Path(where).is_relative_to(site) else where}"
                + (f", but ldd finds no {', '.join(missing)}" if missing else "")
                if where
                else "nothing"
            ),
        )


def site_packages() -> Path:
    import torch

    return Path(torch.__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, help="site-packages to check (default: the one torch is imported from)")
    args = parser.parse_args(argv)
    import torch

    site = args.site or site_packages()
    report = Report()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}) in {site}")
    check_archs(report, torch._C._cuda_getArchFlags())
    check_ldd(report, site)
    check_by_name(report, site)
    for line in report.skipped:
        print("skip  " + line)
    print(json.dumps({"passed": len(report.passed), "failed": report.failures, "skipped": len(report.skipped)}))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
