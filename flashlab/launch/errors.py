"""The launcher's two errors: a source that does not compile, a launch that fails."""


class KernelCompileError(RuntimeError):
    """NVRTC refused a kernel source; the message carries the compiler log (NVRTC's offline
    compile also sets .log, the log alone)."""


class KernelLaunchError(RuntimeError):
    """A kernel launch or run failed; the message names the kernel and its arguments."""
