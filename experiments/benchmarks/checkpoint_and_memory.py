"""Per-device memory of the train state under each mesh, and checkpoint save/restore times.

    python experiments/benchmarks/checkpoint_and_memory.py [--configs quickstart,tiny] [--repeats 5] [--dir /tmp]

Memory: the state (parameters + Adam moments, and the EMA copy) is created directly sharded on each mesh of 8
simulated CPU devices (as the trainer does), and the bytes each device holds are summed over the arrays'
addressable shards (parallel.bytes_per_device). Checkpoints: the quickstart state on the default mesh (data=8) is
saved with the trainer's Checkpointer `--repeats` times; "save returns" is the time until save() hands control
back (device-to-host copy done, writing continues in the background), "durable" until the checkpoint is committed
on disk; a restore reads it back onto the mesh. Medians are reported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # configs/
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()  # before jax is imported
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from configs import quickstart  # noqa: E402
from imagen_jax import parallel  # noqa: E402
from imagen_jax.training import state as state_lib  # noqa: E402
from imagen_jax.training import steps  # noqa: E402
from imagen_jax.training.checkpoint import Checkpointer, abstract_like  # noqa: E402

MESHES = (  # (data, fsdp, tensor) over 8 devices, plus one device alone
    (1, 1, 1),
    (8, 1, 1),
    (1, 8, 1),
    (1, 1, 8),
    (2, 2, 2),
    (1, 4, 2),
    (2, 4, 1),
)


def _state_layout(config: ml_collections.ConfigDict):
    """(family, function rng -> boxed TrainState) for the config's model at a batch of one."""
    family, program = steps.from_config(config)
    length, dim = config.text.max_length, config.text.t5.d_model
    size = config.data.image_size
    example = {
        "images": jnp.zeros((1, size, size, 3)),
        "text_embeddings": jnp.zeros((1, length, dim)),
        "text_mask": jnp.ones((1, length), bool),
    }
    return family, lambda rng: state_lib.create(family.init(rng, example), program.optimizer)


def sharded_state(config: ml_collections.ConfigDict, mesh_shape: tuple[int, int, int]):
    """(TrainState created directly with its shardings on the mesh, its shardings, its shapes)."""
    _, boxed_state = _state_layout(config)
    boxed = jax.eval_shape(boxed_state, jax.random.key(0))
    devices = jax.devices()[: math.prod(mesh_shape)]
    mesh_config = ml_collections.ConfigDict(dict(zip(parallel.MESH_AXES, mesh_shape, strict=True)))
    mesh = parallel.make_mesh(mesh_config, devices=devices)
    shardings = parallel.logical_shardings(boxed, mesh)
    state = jax.jit(lambda r: nn.meta.unbox(boxed_state(r)), out_shardings=shardings)(jax.random.key(0))
    return state, shardings, nn.meta.unbox(boxed)


def _tree_bytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def memory_table(name: str, config: ml_collections.ConfigDict) -> list[dict]:
    rows = []
    for mesh_shape in MESHES:
        state, _, _ = sharded_state(config, mesh_shape)
        params_opt = (state.params, state.opt_state)
        total = _tree_bytes(params_opt)
        held = parallel.bytes_per_device(params_opt)
        held_ema = parallel.bytes_per_device(state.ema_params)
        rows.append(
            {
                "config": name,
                "mesh": dict(zip(parallel.MESH_AXES, mesh_shape, strict=True)),
                "devices": len(held),
                "params": sum(leaf.size for leaf in jax.tree.leaves(state.params)),
                "params_opt_total_bytes": total,
                "params_opt_max_per_device_bytes": max(held.values()),
                "params_opt_min_per_device_bytes": min(held.values()),
                "fraction_of_total": max(held.values()) / total,
                "ema_max_per_device_bytes": max(held_ema.values()),
            }
        )
        del state
    return rows


def checkpoint_times(config: ml_collections.ConfigDict, directory: str, repeats: int) -> dict:
    """Median seconds: save() returning, save durable (returned + committed), restore; and the bytes saved."""
    state, shardings, shapes = sharded_state(config, (8, 1, 1))
    record = {"config": config.to_dict(), "data": {"next_step": 0, "seed": config.seed}}
    returns, durable, restores = [], [], []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        ckpt = Checkpointer(os.path.join(tmp, "ckpt"), keep=repeats + 1)
        ckpt.save(0, state, record)  # warm-up: Orbax's first save sets up its threads and metadata
        ckpt.wait()
        for step in range(1, repeats + 1):
            jax.block_until_ready(state)
            start = time.perf_counter()
            ckpt.save(step, state, record)
            returned = time.perf_counter()
            ckpt.wait()
            done = time.perf_counter()
            returns.append(returned - start)
            durable.append(done - start)
        target = abstract_like(shapes, shardings)
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            restored, _ = ckpt.restore(step, target)
            jax.block_until_ready(restored)
            restores.append(time.perf_counter() - start)
            del restored
        on_disk = sum(
            os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(os.path.join(tmp, "ckpt", "1"))
            for f in files
        )
        ckpt.close()
    return {
        "state_bytes": _tree_bytes(state),
        "on_disk_bytes": on_disk,
        "repeats": repeats,
        "save_returns_s": statistics.median(returns),
        "save_durable_s": statistics.median(durable),
        "restore_s": statistics.median(restores),
        "save_returns_all_s": returns,
        "save_durable_all_s": durable,
        "restore_all_s": restores,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="quickstart,tiny", help="comma-separated: quickstart, tiny")
    parser.add_argument("--repeats", type=int, default=5, help="saves and restores to take the median of")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("quickstart", "tiny")]
    if unknown or not names:
        parser.error(f"--configs {args.configs!r}: choose from quickstart, tiny")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    configs = {n: quickstart.get_config("tiny" if n == "tiny" else None) for n in names}

    print(f"{jax.device_count()} {jax.devices()[0].platform} devices, jax {jax.__version__}")
    print("\nParameters + Adam state per device (MiB), from the arrays' addressable shards:")
    print(f"{'config':<11}{'mesh (data,fsdp,tensor)':<25}{'total':>10}{'max/device':>12}{'fraction':>10}")
    memory = []
    for name, config in configs.items():
        for row in memory_table(name, config):
            memory.append(row)
            mesh = ",".join(str(v) for v in row["mesh"].values()) + f" ({row['devices']} dev)"
            print(
                f"{name:<11}{mesh:<25}{_mib(row['params_opt_total_bytes']):>10}"
                f"{_mib(row['params_opt_max_per_device_bytes']):>12}{row['fraction_of_total']:>10.3f}"
            )
    results = {"memory": memory}
    if "quickstart" in configs:
        times = checkpoint_times(configs["quickstart"], args.dir, args.repeats)
        results["checkpoint"] = times
        print(
            f"\nQuickstart checkpoint ({_mib(times['state_bytes'])} MiB of state, {_mib(times['on_disk_bytes'])} MiB "
            f"on disk in {args.dir}), median of {args.repeats}, mesh data=8:"
        )
        print(f"  async save returns after {times['save_returns_s'] * 1e3:.1f} ms")
        print(f"  save durable (committed) after {times['save_durable_s'] * 1e3:.1f} ms")
        print(f"  restore onto the mesh: {times['restore_s'] * 1e3:.1f} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
