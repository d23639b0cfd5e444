"""Test setup (must happen before jax is imported): 8 simulated CPU devices for sharding tests, XLA's backend
optimisation level 0, and a persistent compilation cache.

The tests' models are tiny, so their time is almost all compilation. LLVM's optimisation passes are most of that:
at level 0 a tiny U-Net's jitted init (threefry for every parameter) compiles in ~6 s instead of ~60 s, and the
U-Net test file runs 5x faster; the numbers computed are the same programs, only less optimised machine code.
Many tests then compile the same programs again (the tiny configs' train step, init and sampler, in each command
line test): the persistent cache (.cache/jax-tests, shared by the xdist workers and the tests' subprocesses)
compiles each once per run. Its key is the whole program, the compile options and the jax/XLA versions, so a hit
is the executable that compiling again would give. A clean clone (CI) starts empty; a local run reuses the last
one's entries (remove the folder to time a cold run). JAX_COMPILATION_CACHE_DIR set beforehand takes precedence.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).parents[1] / ".cache" / "jax-tests")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # default 1 s: most tiny programs
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))  # bytes; least recently used go first
