"""Test setup (must happen before jax is imported): 8 simulated CPU devices for sharding tests, and XLA's backend
optimisation level 0. The tests' models are tiny, so their time is almost all compilation, and LLVM's optimisation
passes are most of that: a tiny U-Net's jitted init (threefry for every parameter) compiles in ~6 s instead of ~60 s,
and the U-Net test file runs 5x faster. The numbers computed are the same programs, only less optimised machine code.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
