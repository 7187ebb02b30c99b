"""`flashlab info`: versions, the kernel sources and cache, the device, and each kernel of the
registry (per variant that runs here) with its tiles and shared memory."""
from __future__ import annotations

from tabulate import tabulate

from .. import registry


def _takes(spec) -> str | None:
    """The head dims `spec` takes, in words (None where it takes any)."""
    if spec.head_dims is not None:
        return f"{spec.name} head dims {', '.join(map(str, spec.head_dims))}"
    if spec.max_head_dim is not None:
        return f"{spec.name} any d <= {spec.max_head_dim}"
    return None


def _kernel_rows(cc: int, smem: int) -> list:
    """[kernel (variant), d, pass, Br, Bc, shared memory] for each kernel at d = 64, 128, with
    the source that runs on compute capability `cc` (kernels with several name theirs)."""
    from ..launch import plans

    rows = []
    for name in registry.names():
        spec = registry.get(name)
        for d in (64, 128):
            if not spec.takes_head_dim(d):
                continue
            try:
                vname = spec.variant_for(cc, d)
            except ValueError:  # no source of it runs on this device
                continue
            label = (name if len(spec.variants) == 1 else
                     f"{name} ({spec.variants[vname].source}, {vname})")
            for direction in ("forward", "backward"):
                p = plans.plan(name, d, direction, smem, vname)
                rows.append([label, d, direction, p["Br"] or "-", p["Bc"] or "-",
                             f"{p['smem'] / 1024:.0f} KB" if p["smem"] else "static"])
    return rows


def _cpu_backend_line() -> str:
    """Whether the CPU backend can run here, and with what."""
    from ..cpu import build

    try:
        cxx = build.compiler_name()
    except RuntimeError as e:
        return f"CPU backend: unavailable ({e})"
    return (f"CPU backend: {cxx}; kernels {', '.join(registry.for_cpu())} run on NumPy arrays "
            f"(backend='cpu', FLASHLAB_BACKEND=cpu; compile cache {build.cache_dir()})")


def _cmd_info(args) -> int:
    import os
    import platform

    import numpy

    from .. import __version__
    from ..launch import device, sources

    print(f"flashlab {__version__}, Python {platform.python_version()}, NumPy {numpy.__version__}")
    print(f"kernel sources: {sources.kernel_dir()}")
    print(_cpu_backend_line())
    try:
        import cupy as cp
    except ImportError:
        from ..install import install_hint

        print(f"CuPy: not installed ({install_hint('cuda13')}); NumPy inputs run the references")
        print("kernels that run on a GPU here: none")
        return 0
    print(f"CuPy {cp.__version__}; kernel cache: "
          f"{os.environ.get('CUPY_CACHE_DIR', os.path.expanduser('~/.cupy/kernel_cache'))}")
    if not device.gpu_available():
        print("CUDA device: none found; kernels that run on a GPU here: none")
        return 0
    try:
        print(f"NVRTC {'.'.join(map(str, cp.cuda.nvrtc.getVersion()))}")
    except Exception as e:  # pragma: no cover
        print(f"NVRTC: not found ({e})")
    dev = cp.cuda.Device()
    lim = device.device_limits(dev.id)
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device {dev.id}: {name}, compute capability {lim['compute_capability']}, "
          f"{lim['sm_count']} SMs, shared memory per block {lim['smem_default'] // 1024} KB "
          f"(opt-in {lim['smem_optin'] // 1024} KB)")
    rows = _kernel_rows(int(lim["compute_capability"]), lim["smem_optin"])
    here = device.available_kernels()
    takes = [t for t in (_takes(registry.get(n)) for n in here) if t]
    print("kernels that run here: " + ", ".join(here) + (f"; {', '.join(takes)}" if takes else ""))
    print(tabulate(rows, headers=["kernel", "d", "pass", "Br", "Bc", "shared memory"]))
    return 0
