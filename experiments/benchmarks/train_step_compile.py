"""Compile time, program size and step time of the quickstart's train step, with the non-finite guard as it is
(update.all_finite: one global norm) and as it was before 2026-12-03 (a per-leaf flag joined by `and`, which XLA
copied into every parameter's update fusion).

python experiments/benchmarks/train_step_compile.py --runs 3 --out experiments/benchmarks/results/train_step_compile.json

Each (guard, run) is a fresh child process (no compilation cache): it builds configs/quickstart.py's experiment on
the CPU split into one JAX device per core, lowers and compiles the jitted train step at the config's batch, counts
the compiled HLO's instructions, and times 20 steps after a warm-up step. The runs alternate between the guards, so
the medians and their ratio come from the same window of the same machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import fresh_process  # this folder: run as a script, it is on sys.path

REPO = pathlib.Path(__file__).resolve().parents[2]
GUARDS = ("global_norm", "per_leaf_and")


def per_leaf_and(*trees):
    """The guard before 2026-12-03: every leaf's own all(isfinite), joined by `and`."""
    import jax
    import jax.numpy as jnp

    leaves = [leaf for tree in trees for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def measure(guard: str, steps: int) -> dict:
    """One child's measurement (runs in the child)."""
    sys.path.insert(0, str(REPO))
    from imagen_jax import parallel

    parallel.skip_absent_tpu_runtime()
    from imagen_jax.config_files import sibling

    config = sibling(str(REPO / "configs" / "x.py"), "quickstart").get_config(None)
    parallel.split_host_cpu(int(config.mesh.cpu_devices), int(config.train.batch_size), 1)
    import jax
    import numpy as np

    from imagen_jax import experiment
    from imagen_jax.training.steps import update

    if guard == "per_leaf_and":
        update.all_finite = per_leaf_and
    exp = experiment.build(config, f"/tmp/train_step_compile_{os.getpid()}")
    state = exp.init_state(jax.random.key(0))
    example = {k: np.asarray(v) for k, v in exp.example_batch(config.train.batch_size).items()}
    batch = parallel.global_batch(example, exp.mesh)
    step = exp.jit_train_step(jax.random.key(1))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    instructions = sum(1 for line in compiled.as_text().splitlines() if " = " in line)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return dict(
        guard=guard,
        lower_s=lower_s,
        compile_s=compile_s,
        hlo_instructions=instructions,
        step_s=(time.perf_counter() - start) / steps,
        devices=jax.device_count(),
        loadavg=os.getloadavg(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fresh_process.emit(measure(args.child, args.steps))
        return
    rows = []
    for run in range(args.runs):
        for guard in GUARDS:
            row = fresh_process.child_result(__file__, "--child", guard, "--steps", str(args.steps))
            rows.append(dict(row, run=run))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for guard in GUARDS:
        mine = [r for r in rows if r["guard"] == guard]
        summary[guard] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("compile_s", "hlo_instructions", "step_s", "lower_s")
        }
    summary["compile_ratio_before_over_after"] = (
        summary["per_leaf_and"]["compile_s"] / summary["global_norm"]["compile_s"]
    )
    print(json.dumps(summary, indent=1))
    if args.out:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        pathlib.Path(args.out).write_text(
            json.dumps(dict(date=stamp, rows=rows, median=summary), indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
