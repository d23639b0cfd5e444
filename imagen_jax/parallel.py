"""Multi-process start-up, device mesh, logical-axis rules and shardings: one code path for 1 CPU, 8 simulated
devices, a pod, or a TPU topology compiled for ahead of time (modes/compile.py).

Parameters are annotated with logical axis names where they are created (models/layers.py, text/t5.py), and
activations where they are computed (activation_sharding.constrain); LOGICAL_AXIS_RULES below is the default
table that maps both onto the mesh axes (data, fsdp, tensor). A config may replace it with its own
mesh.logical_axis_rules (axis_rules reads and checks it).
"""

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from imagen_jax.activation_sharding import ACTIVATION_AXES, fit_spec
from imagen_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]  # (logical axis, mesh axis | tuple of mesh axes | None) pairs

# logical axis -> mesh axis (or None = replicated). Batch is split over data and fsdp; parameters are
# sharded over fsdp (ZeRO-3 style) on their input-side axis and over tensor on their output-side axis;
# activations keep the batch split and put channels, heads and feed-forward units over tensor.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("mlp", "tensor"),
    ("conv_out", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("relpos_buckets", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_channels", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
)
PARAMETER_AXES = (
    "batch",
    "embed",
    "conv_in",
    "mlp",
    "conv_out",
    "heads",
    "vocab",
    "kv",
    "norm",
    "relpos_buckets",
)


class MeshConfigError(UserError):
    """The requested mesh does not fit the available devices."""


def split_host_cpu(requested: int, batch_size: int, micro_steps: int = 1) -> int | None:
    """Splits the host CPU into several JAX CPU devices before JAX starts: mesh.cpu_devices. Returns the count
    set, or None when nothing was changed.

    XLA:CPU runs one training step on about 1.3 cores, so on a CPU-only machine a data-parallel mesh over one
    device per core is faster (1.6x for the quickstart on 2 cores, the same losses). requested: 0 leaves JAX's
    default (one CPU device); n > 0 asks for n; -1 for one per core, the largest count <= os.cpu_count() that
    divides the per-step micro-batch (batch_size / micro_steps). Accelerator devices are not affected. An
    explicit --xla_force_host_platform_device_count in XLA_FLAGS wins, and once JAX has started (e.g. inside
    the tests) the count can no longer change, so nothing is done then either.
    """
    if requested == 0 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if requested < 0:
        micro_batch = max(batch_size // max(micro_steps, 1), 1)
        requested = max(n for n in range(1, (os.cpu_count() or 1) + 1) if micro_batch % n == 0)
    try:
        jax.config.update("jax_num_cpu_devices", int(requested))
    except RuntimeError:  # JAX already started in this process
        return None
    return int(requested)


class DistributedInitError(UserError):
    """jax.distributed could not be initialised with the given settings (printed by main as one line)."""


def _detected_cluster() -> str | None:
    """The multi-process environment JAX's own auto-detection recognises (slurm, gce_tpu, gke_tpu, ompi, k8s), or
    None. Uses JAX's cluster registry, the one jax.distributed.initialize() consults."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - the registry moved; fall back to explicit settings only
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            if env.is_env_present():
                return env.name or env.__name__
        except Exception:  # a half-configured environment is "not present", as JAX treats it
            continue
    return None


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else -1
    except ValueError as err:
        raise DistributedInitError(f"{name}={value!r} must be an integer.") from err


def initialize_distributed(dist_config: ml_collections.ConfigDict | None) -> bool:
    """Joins a multi-process (multi-host) run with jax.distributed.initialize; call it before any other JAX use.

    dist_config (config.distributed) keys; an empty string or -1 means "from the environment":
      initialize: "auto" (join when an address or process count is given, or JAX detects a SLURM / Open MPI /
        Cloud TPU / Kubernetes job), "always" (plain jax.distributed.initialize() with what is given), "never";
      coordinator_address: "host:port" of process 0 (else $JAX_COORDINATOR_ADDRESS, else the cluster's);
      num_processes, process_id: (else $JAX_NUM_PROCESSES / $JAX_PROCESS_ID, else the cluster's).
    Returns True when this process runs multi-controller JAX (joined here or before), False for a single process.
    """
    if jax.distributed.is_initialized():
        return True
    dist = dist_config if dist_config is not None else ml_collections.ConfigDict()
    mode = str(dist.get("initialize", "auto"))
    if mode not in ("auto", "always", "never"):
        raise DistributedInitError(f"distributed.initialize={mode!r}; choose one of auto, always, never.")
    if mode == "never":
        return False
    address = str(dist.get("coordinator_address", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", ""))
    num_processes = int(dist.get("num_processes", -1))
    num_processes = num_processes if num_processes > 0 else _env_int("JAX_NUM_PROCESSES")
    process_id = int(dist.get("process_id", -1))
    process_id = process_id if process_id >= 0 else _env_int("JAX_PROCESS_ID")
    cluster = _detected_cluster()
    if mode == "auto" and not (address or num_processes > 1 or cluster):
        return False  # a plain single-process run
    kwargs = {
        "coordinator_address": address or None,
        "num_processes": num_processes if num_processes > 0 else None,
        "process_id": process_id if process_id >= 0 else None,
    }
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as err:  # jax raises ValueError, RuntimeError or XlaRuntimeError (e.g. a timeout)
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None) or "nothing given"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedInitError(
            f"jax.distributed.initialize failed ({given}; detected cluster: {cluster or 'none'}): {first}. "
            "Set distributed.coordinator_address (host:port of process 0), distributed.num_processes and "
            "distributed.process_id, or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID "
            "environment variables; distributed.initialize=never runs a single process."
        ) from err
    print(
        f"jax.distributed: process {jax.process_index()} of {jax.process_count()}"
        f" (coordinator {address or 'from the cluster'}, cluster: {cluster or 'none'})",
        flush=True,
    )
    return True


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; one entry may be -1 to take every remaining device."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise MeshConfigError(
            f"At most one of mesh.{{data,fsdp,tensor}} may be -1, got {dict(zip(MESH_AXES, sizes, strict=True))}."
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshConfigError(
            f"Mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes, strict=True))}."
        )
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise MeshConfigError(
                f"{num_devices} devices cannot be split into a mesh with fixed axes of size {fixed}."
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise MeshConfigError(
            f"Mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available; set one axis to -1 to fill the rest."
        )
    return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: shardings are propagated by the compiler (GSPMD), not carried in the array types.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def host_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over one process's devices (default: this process's; of `devices`, those of the first one's
    process), for the frozen text encoder: mesh.tensor of them (when it divides their count, else 1) by fsdp over
    the rest, data 1. Its parameters are sharded over the host's chips and every process encodes its own prompts
    without waiting for the others."""
    devices = list(jax.local_devices() if devices is None else devices)
    devices = [d for d in devices if d.process_index == devices[0].process_index]
    tensor = int(mesh_config.get("tensor", 1))
    tensor = tensor if tensor > 0 and len(devices) % tensor == 0 else 1
    shape = (1, len(devices) // tensor, tensor)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def axis_rules(mesh_config: ml_collections.ConfigDict | None) -> tuple[tuple[str, Any], ...]:
    """The logical-axis rules of a config's mesh section (mesh.logical_axis_rules; LOGICAL_AXIS_RULES when it
    has none), checked: MeshConfigError naming the entry that is not a (logical name, mesh axes) pair, names an
    unknown logical or mesh axis, or repeats a logical name."""
    rules = (mesh_config or {}).get("logical_axis_rules") if mesh_config is not None else None
    if rules is None:
        return LOGICAL_AXIS_RULES
    known, seen, checked = set(PARAMETER_AXES) | set(ACTIVATION_AXES), set(), []
    example = "e.g. (('activation_channels', 'tensor'), ('batch', ('data', 'fsdp')), ('kv', None))"
    for entry in rules:
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise MeshConfigError(
                f"mesh.logical_axis_rules entry {entry!r} is not a (logical axis, mesh axes) pair; {example}."
            )
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, tuple | list) else axes
        mesh_names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if name not in known:
            raise MeshConfigError(
                f"mesh.logical_axis_rules names the logical axis {name!r}, which no model uses; known: "
                f"{sorted(known)}."
            )
        if name in seen:
            raise MeshConfigError(f"mesh.logical_axis_rules gives the logical axis {name!r} twice.")
        if not all(isinstance(m, str) and m in MESH_AXES for m in mesh_names) or len(set(mesh_names)) != len(
            mesh_names
        ):
            raise MeshConfigError(
                f"mesh.logical_axis_rules maps {name!r} to {axes!r}: use None, one of {MESH_AXES} or a tuple "
                "of distinct ones."
            )
        seen.add(name)
        checked.append((name, axes))
    missing = sorted(set(PARAMETER_AXES) - seen)
    if missing:
        raise MeshConfigError(
            f"mesh.logical_axis_rules has no rule for {missing}: give every parameter axis one (None to "
            "replicate it)."
        )
    return tuple(checked)


def add_mesh_keys(config: ml_collections.ConfigDict) -> None:
    """Adds mesh.logical_axis_rules (LOGICAL_AXIS_RULES) to a config that has a mesh section without it, so that
    it can be printed, saved and overridden (--config.mesh.logical_axis_rules=...) like any key."""
    mesh = config.get("mesh")
    if isinstance(mesh, ml_collections.ConfigDict) and "logical_axis_rules" not in mesh:
        with mesh.unlocked():
            mesh.logical_axis_rules = LOGICAL_AXIS_RULES


def skip_absent_tpu_runtime() -> bool:
    """Keeps JAX on the CPU on a machine that has libtpu installed (pip install -e ".[tpu]", for mode=compile)
    but no TPU chip and no NVIDIA GPU; returns True when it did. Otherwise JAX would initialise libtpu at its
    first use in every run: libtpu prints warnings about the missing TPU metadata and takes the machine-wide
    /tmp/libtpu_lockfile, which then makes mode=compile in another process fail. Call it before JAX starts;
    JAX_PLATFORMS (or jax_platforms) set by the user, or JAX_FORCE_TPU_INIT, always win."""
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "JAX_FORCE_TPU_INIT" in os.environ:
        return False
    if importlib.util.find_spec("libtpu") is None:
        return False
    from jax._src import hardware_utils  # JAX's own probe of the PCI bus, the one its TPU start-up uses

    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    if chips or hardware_utils.has_visible_nvidia_gpu():
        return False
    try:
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:  # JAX's backends already started in this process
        return False
    return True


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a tree of (possibly logically boxed) abstract arrays, e.g. from jax.eval_shape.

    The returned tree has the structure of the *unboxed* tree.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(abstract_tree)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy arrays -> global jax.Arrays sharded along the batch dimension."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), np.asarray(value))
        for key, value in local_batch.items()
    }


def batch_rows_by_process(
    mesh: Mesh, global_batch_size: int, process_of: Callable[[jax.Device], int] | None = None
) -> dict[int, set[int]]:
    """{process index: the global batch rows its devices hold} under batch_sharding(mesh); process_of(device)
    defaults to device.process_index."""
    process_of = process_of or (lambda device: device.process_index)
    indices = batch_sharding(mesh, 1).devices_indices_map((global_batch_size,))
    rows: dict[int, set[int]] = {}
    for device, (rows_slice,) in indices.items():
        rows.setdefault(process_of(device), set()).update(range(global_batch_size)[rows_slice])
    return rows


def check_process_batches(
    mesh: Mesh, global_batch_size: int, process_of: Callable[[jax.Device], int] | None = None
) -> None:
    """Raises MeshConfigError unless every process's devices hold their own global_batch_size / processes rows,
    shared with no other process: each process feeds its own data, so rows held on two processes would get
    different values (process-local batches become one global array only if they tile it)."""
    rows = batch_rows_by_process(mesh, global_batch_size, process_of)
    share = global_batch_size // max(len(rows), 1)
    overlap = any(rows[a] & rows[b] for a in rows for b in rows if a < b)
    if overlap or any(len(r) != share for r in rows.values()):
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        raise MeshConfigError(
            f"Mesh {dict(mesh.shape)} puts the same batch rows on devices of different processes "
            f"({len(rows)} processes, data x fsdp = {shards} batch shards), but every process reads its own "
            "data. Make mesh.data x mesh.fsdp a multiple of the process count, with mesh.tensor no larger than "
            "the devices of one process."
        )


def per_device_batch(global_batch_size: int, mesh: Mesh, micro_steps: int = 1) -> int:
    """Examples per device per step; the global batch must split evenly over data x fsdp x micro-steps
    (train.grad_accum_steps), so that every micro-batch is itself split evenly over the devices, and into one
    disjoint share per process (check_process_batches)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if micro_steps < 1:
        raise MeshConfigError(f"train.grad_accum_steps={micro_steps} must be >= 1.")
    if global_batch_size % (shards * micro_steps) or global_batch_size % jax.process_count():
        raise MeshConfigError(
            f"train.batch_size={global_batch_size} must be divisible by data x fsdp = {shards}"
            + (f" x train.grad_accum_steps = {shards * micro_steps}" if micro_steps > 1 else "")
            + f" and by the process count {jax.process_count()}."
        )
    if jax.process_count() > 1:
        check_process_batches(mesh, global_batch_size)
    return global_batch_size // shards


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """Bytes of `tree`'s arrays held on each of this process's devices, summed over their addressable shards."""
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
