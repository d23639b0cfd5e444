"""mesh.cpu_devices: the host CPU split into several JAX devices, decided before JAX starts (fresh processes)."""

import os
import subprocess
import sys

import jax

from imagen_jax import parallel

PROBE = """
import os, sys, jax
from imagen_jax import parallel
os.cpu_count = lambda: int(sys.argv[3])
got = parallel.split_host_cpu(int(sys.argv[1]), int(sys.argv[2]))
print(got, jax.device_count())
"""


def _probe(requested: int, batch: int, cores: int, xla_flags: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(requested), str(batch), str(cores)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_one_device_per_core_dividing_the_batch():
    assert _probe(-1, 32, 2) == "2 2"
    assert _probe(-1, 32, 6) == "4 4"  # 6 cores, but the batch of 32 splits evenly over 4 at most
    assert _probe(-1, 9, 2) == "1 1"
    assert _probe(3, 32, 2) == "3 3"  # an explicit count is taken as given


def test_default_and_explicit_xla_flag_are_left_alone():
    assert _probe(0, 32, 2) == "None 1"
    assert _probe(-1, 32, 2, "--xla_force_host_platform_device_count=5") == "None 5"


def test_no_change_once_jax_has_started():
    assert jax.device_count() == 8  # tests/conftest.py
    assert parallel.split_host_cpu(2, 32) is None  # XLA_FLAGS names a count here
    saved = os.environ.pop("XLA_FLAGS")
    try:
        assert parallel.split_host_cpu(2, 32) is None  # JAX already started: too late, nothing changes
    finally:
        os.environ["XLA_FLAGS"] = saved
    assert jax.device_count() == 8
