"""TPU topologies for ahead-of-time compilation on a machine with no TPU (mode=compile, modes/compile.py).

libtpu (pip install -e ".[tpu]") describes a named slice, e.g. "v5p:8x8x4" or "v4:8x8x4", and XLA compiles for its
chips on this CPU: memory per chip and FLOPs per chip are then read from the compiled program. CHIPS holds what
libtpu does not say: each generation's HBM per chip and peak bf16 FLOP/s, with the page they come from.
"""

import contextlib
import dataclasses
import importlib.util
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from imagen_jax.errors import UserError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation's chip: HBM per chip (bytes), peak dense bf16 FLOP/s per chip, and where those come from.
    chip_config: libtpu's chip configuration for topology names of this generation ("megacore": one JAX device per
    chip, as a TPU VM of that generation shows)."""

    generation: str
    hbm_bytes: int
    peak_bf16_flops: float
    source: str
    chip_config: str = "default"


# Google Cloud's published per-chip figures (read 2026-12-02). HBM is the capacity; XLA's usable limit on a chip is
# a little lower (the runtime reserves some), so `fits` within a few percent of the capacity is a close call.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 275e12, "https://cloud.google.com/tpu/docs/v4", chip_config="megacore"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 95 * GiB, 459e12, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, "https://cloud.google.com/tpu/docs/v6e"),
}
_NAME = re.compile(r"(v\d+[a-z]*):(\d+(x\d+){1,2})")

# mode=compile's settings (config.compile), added to every config when it is loaded (workdir.parse_command_line).
COMPILE_DEFAULTS = {
    "topology": "",  # e.g. "v5p:8x8x4" (256 chips) or "v4:8x8x4" (the paper's 256 TPU-v4 chips)
    "batch_size": 0,  # global train batch to compile for; 0: train.batch_size
    "sample_batch_size": 0,  # images per guided sampling step; 0: one per batch shard (mesh.data x mesh.fsdp)
    "stage": "",  # a cascade's stage to compile ("": every stage), e.g. when the stages train on different slices
    "programs": ("train_step", "sample_step", "encode_text"),  # which programs to compile (PROGRAMS)
}
PROGRAMS = ("train_step", "sample_step", "encode_text")


class TopologyError(UserError):
    """The topology name cannot be compiled for here (unknown name, no libtpu)."""


def add_compile_keys(config: ml_collections.ConfigDict) -> None:
    """Adds the compile section (COMPILE_DEFAULTS) to a config without one, and any of its keys it lacks, so that
    --config.compile.topology=... can be given to any config."""
    with config.unlocked():
        if "compile" not in config:
            config.compile = ml_collections.ConfigDict()
    with config.compile.unlocked():
        for key, value in COMPILE_DEFAULTS.items():
            if key not in config.compile:
                config.compile[key] = value


def check_programs(programs: Any) -> tuple[str, ...]:
    """compile.programs as a tuple, or a TopologyError naming what is not one of PROGRAMS."""
    chosen = (programs,) if isinstance(programs, str) else tuple(programs)
    unknown = [p for p in chosen if p not in PROGRAMS]
    if unknown or not chosen:
        raise TopologyError(
            f"compile.programs={chosen!r}: choose one or more of {PROGRAMS}, e.g. "
            "--config.compile.programs=\"('train_step',)\"."
        )
    return chosen


def chip_of(topology: str) -> Chip:
    """The Chip of a topology name such as "v5p:8x8x4"; TopologyError for a name of another form or generation."""
    match = _NAME.fullmatch(topology.strip())
    if not match:
        raise TopologyError(
            f"compile.topology={topology!r} is not a TPU topology name; give <generation>:<shape>, e.g. "
            f"v5p:8x8x4, v4:8x8x4, v5e:16x16 or v6e:16x16 (generations: {', '.join(CHIPS)})."
        )
    if match.group(1) not in CHIPS:
        raise TopologyError(
            f"compile.topology={topology!r}: no chip figures for {match.group(1)!r}; known generations: "
            f"{', '.join(CHIPS)} (imagen_jax/topology.py, CHIPS)."
        )
    return CHIPS[match.group(1)]


def require_libtpu() -> None:
    """TopologyError in one line unless libtpu, which compiles for TPUs, is installed."""
    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(
            'mode=compile needs libtpu to compile for a TPU topology: pip install -e ".[tpu]" '
            "(libtpu==0.0.42.*, the release that matches jax 0.10.2; ~140 MB, no TPU needed)."
        )


@contextlib.contextmanager
def _stderr_kept_unless_failing() -> Iterator[None]:
    """Holds back what C++ code writes to stderr inside the block (libtpu's start-up warnings about the TPU
    metadata a CPU machine has no use for), and writes it out only when the block raises."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def devices(topology: str) -> Sequence[Any]:
    """The devices of a TPU slice named `topology` (one per chip), for meshes that are only compiled for.

    ALLOW_MULTIPLE_LIBTPU_LOAD lets this run beside another process that has libtpu loaded (the machine-wide
    lock would otherwise refuse it); TPU_SKIP_MDS_QUERY stops libtpu asking a metadata server this machine
    does not have."""
    chip = chip_of(topology)
    require_libtpu()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies

    try:
        with _stderr_kept_unless_failing():
            description = topologies.get_topology_desc(
                topology_name=topology, platform="tpu", chip_config_name=chip.chip_config
            )
    except Exception as err:  # libtpu raises JaxRuntimeError / ValueError with a long message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TopologyError(f"libtpu cannot describe compile.topology={topology!r}: {first}") from err
    return list(description.devices)
