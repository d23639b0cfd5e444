"""Device mesh, logical-axis rules and shardings: the same code on 1 CPU, 8 simulated devices or a pod.

Parameters are annotated with logical axis names where they are created (models/layers.py, text/t5.py);
LOGICAL_AXIS_RULES below is the one table that maps them onto the mesh axes (data, fsdp, tensor).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or None = replicated). Batch is split over data and fsdp; parameters are
# sharded over fsdp (ZeRO-3 style) on their input-side axis and over tensor on their output-side axis.
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
)


class MeshConfigError(ValueError):
    """The requested mesh does not fit the available devices."""


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


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide evenly (those dimensions are replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[n] for n in names)
        fitted.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a tree of (possibly logically boxed) abstract arrays, e.g. from jax.eval_shape.

    The returned tree has the structure of the *unboxed* tree.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(abstract_tree)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh)),
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


def per_device_batch(global_batch_size: int, mesh: Mesh) -> int:
    """Examples per device; the global batch must split evenly over data x fsdp."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size % shards or global_batch_size % jax.process_count():
        raise MeshConfigError(
            f"train.batch_size={global_batch_size} must be divisible by data x fsdp = {shards} "
            f"and by the process count {jax.process_count()}."
        )
    return global_batch_size // shards
