"""A stand-in for CuPy, enough for flashlab.launch to run its launch paths on a CPU: arrays
that carry a shape, a dtype and a device, a RawModule whose kernels record every launch (grid,
block, arguments, shared memory) instead of running, and a device with an H100's limits.

`install(monkeypatch, cc="90")` puts it in sys.modules["cupy"] and gives the launcher empty
per-process caches (modules, functions, device limits, dummies) for the test; it returns the
fake module, whose `launches` and `compiles` lists the test reads. `uninstall()` afterwards."""
import sys
import types

import ml_dtypes
import numpy as np


_FIRST = 1 << 20
_next_ptr = [_FIRST]  # fake device addresses, 256-byte aligned like cudaMalloc's


def is_address(x: int) -> bool:
    """x lies in memory a fake array was given (a pointer into a workspace)."""
    return _FIRST <= x < _next_ptr[0]


def c_strides(shape, itemsize) -> tuple:
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


class ndarray:
    __module__ = "cupy._core.core"

    def __init__(self, shape, dtype=np.float32, device=0, fill=np.nan, strides=None, ptr=None):
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, tuple) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.device = types.SimpleNamespace(id=device)
        dense = c_strides(self.shape, self.dtype.itemsize)
        self.strides = dense if strides is None else tuple(int(s) for s in strides)
        self.flags = types.SimpleNamespace(c_contiguous=self.strides == dense)
        if ptr is None:
            ptr = _next_ptr[0]
            _next_ptr[0] += -(-max(1, self.size * self.dtype.itemsize) // 256) * 256
        self.data = types.SimpleNamespace(ptr=ptr)
        self.filled = fill

    def view_of(self, shape, strides, offset_bytes=0):
        """A strided view into this array's buffer (as slicing and transposing would make)."""
        return ndarray(shape, self.dtype, self.device.id, strides=strides,
                       ptr=self.data.ptr + offset_bytes)

    def astype(self, dtype, copy=True):
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        return ndarray(self.shape, dtype, self.device.id)

    def fill(self, value):
        self.filled = value

    def get(self):
        return np.full(self.shape, 0 if np.issubdtype(self.dtype, np.integer) else 1.0,
                       self.dtype)

    def __repr__(self):
        return f"fake_cupy.ndarray({self.shape}, {self.dtype})"


class _OutOfMemory(Exception):
    pass


def _module(cc: str, smem_optin: int, l2: int):
    fake = types.ModuleType("cupy")
    fake.__dict__.update(ndarray=ndarray, float32=np.float32, float16=np.float16,
                         bfloat16=ml_dtypes.bfloat16, int64=np.int64, int32=np.int32,
                         uint8=np.uint8, uint16=np.uint16, uint32=np.uint32, nan=np.nan, launches=[],
                         compiles=[], __version__="0.fake")
    current = [0]

    class Device:
        def __init__(self, device_id=None):
            self.id = current[0] if device_id is None else device_id
            self.compute_capability = cc
            self.attributes = {"MaxSharedMemoryPerBlockOptin": smem_optin,
                               "MultiProcessorCount": 132, "L2CacheSize": l2}

        def __enter__(self):
            self._before, current[0] = current[0], self.id
            return self

        def __exit__(self, *exc):
            current[0] = self._before

    class RawKernel:
        def __init__(self, name):
            self.name = name
            self.max_dynamic_shared_size_bytes = 48 * 1024

        def __call__(self, grid, block, args, shared_mem=0):
            self.kernel(grid, block, args, shared_mem)

        @property
        def kernel(self):  # cupy.cuda.function.Function: (grid, block, args, smem, stream)
            def function(grid, block, args, shared_mem=0, stream=None):
                if shared_mem > self.max_dynamic_shared_size_bytes:
                    raise RuntimeError(f"{self.name}: {shared_mem} bytes of shared memory "
                                       "without the opt-in")
                fake.launches.append(dict(name=self.name, grid=tuple(grid), block=tuple(block),
                                          args=tuple(args), smem=shared_mem, stream=stream))
            return function

    class RawModule:
        def __init__(self, code=None, options=(), name_expressions=None, path=None):
            self.code, self.options, self.names = code, tuple(options), name_expressions
            fake.compiles.append(dict(code=code, options=self.options,
                                      names=tuple(name_expressions or ()), path=path))

        def compile(self):
            pass

        def get_function(self, name):
            if self.names is not None and "<" in name and name not in self.names:
                raise KeyError(f"{name} is not among the module's name expressions")
            return RawKernel(name)

    def empty(shape, dtype=np.float32):
        return ndarray(shape, dtype, current[0])

    def full(shape, value, dtype=np.float32):
        return ndarray(shape, dtype, current[0], value)

    def asarray(x):
        return ndarray(np.shape(x), np.asarray(x).dtype, current[0])

    fake.empty, fake.full, fake.asarray, fake.RawModule = empty, full, asarray, RawModule
    fake.cuda = types.SimpleNamespace(
        Device=Device, memory=types.SimpleNamespace(OutOfMemoryError=_OutOfMemory),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: current[0]))
    return fake


def install(monkeypatch, cc="90", smem_optin=227 * 1024, l2=50 * 2**20):
    from flashlab.launch import buffers, compiler, device, fa2, tc, variants

    fake = _module(cc, smem_optin, l2)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    device.device_limits.cache_clear()
    monkeypatch.setattr(compiler, "_modules", {})
    monkeypatch.setattr(compiler, "_functions", {})
    monkeypatch.setattr(compiler, "_known", {})
    monkeypatch.setattr(compiler, "_smem_allowed", {})
    monkeypatch.setattr(buffers, "_dummies", {})
    monkeypatch.setattr(tc, "_cache", {})
    monkeypatch.setattr(fa2, "_cache", {})
    monkeypatch.setattr(variants, "_cache", {})

    class ArchModule(fake.RawModule):  # sm_90a: what _ArchModule would load from its cubin
        def __init__(self, src, options, names, arch, program="tc90.cu"):
            super().__init__(code=src, options=tuple(options) + (f"--gpu-architecture={arch}",),
                             name_expressions=names)

    monkeypatch.setattr(compiler, "_ArchModule", ArchModule)
    return fake


def uninstall():
    """After the test: device_limits' cache must not keep the fake device's limits."""
    from flashlab.launch import device

    device.device_limits.cache_clear()


def arrays(fake, shapes, dtype=np.float32):
    return [fake.ndarray(s, dtype) for s in shapes]
