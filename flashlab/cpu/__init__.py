"""The CPU backend: flashlab's CUDA C kernels compiled with a C++ compiler and run on NumPy
arrays, each CUDA thread a fiber (flashlab/cpu/runtime/), with barrier-divergence,
out-of-bounds and race checks. build.py makes the library, kernels.py calls it."""
