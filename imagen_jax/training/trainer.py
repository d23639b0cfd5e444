"""The training loop shared by every family: sharded jit step, metrics, progress, checkpoints, resume, SIGTERM."""

import signal
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from imagen_jax import parallel
from imagen_jax.data import pipeline
from imagen_jax.experiment import Experiment
from imagen_jax.training.logging import MetricWriter

PyTree = Any


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (it then checkpoints and exits cleanly)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _record(exp: Experiment, step: int) -> dict[str, Any]:
    """The JSON saved beside the arrays: the full config and where the data stream stands."""
    return {
        "config": exp.config.to_dict(),
        "data": {"next_step": step, "seed": exp.config.seed},
        "text_encoder": exp.text_encoder.identity,
    }


def train(exp: Experiment) -> tuple[PyTree, int, bool]:
    """Trains to config.train.steps, resuming from the latest checkpoint in the workdir.

    Returns (state, step reached, preempted). Saves every train.checkpoint_every steps and at the end.
    """
    config, train_config = exp.config, exp.config.train
    checkpointer = exp.checkpointer()
    writer = MetricWriter(exp.workdir, enabled=jax.process_index() == 0)
    latest = checkpointer.latest_step()
    if latest is None:
        state, start = exp.init_state(jax.random.key(config.seed)), 0
    else:
        state, record = exp.restore(checkpointer, latest)
        start = int(record["data"]["next_step"])
        writer.truncate_after(start)
        print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}.")

    batch_size = train_config.batch_size
    print(
        f"mesh {dict(exp.mesh.shape)}, {jax.process_count()} process(es), {jax.device_count()} device(s), "
        f"global batch {batch_size}, per-device batch {parallel.per_device_batch(batch_size, exp.mesh)}"
    )
    batch_keys = ("images", "text_embeddings", "text_mask")
    batch_shardings = {
        k: parallel.batch_sharding(exp.mesh, nd) for k, nd in zip(batch_keys, (4, 3, 2), strict=True)
    }
    train_step = jax.jit(
        exp.family.train_step,
        in_shardings=(exp.state_shardings, batch_shardings, parallel.replicated(exp.mesh)),
        out_shardings=(exp.state_shardings, parallel.replicated(exp.mesh)),
        donate_argnums=(0,),
    )
    step_rng = jax.random.key(config.seed + 1)
    batches = pipeline.train_batches(exp.dataset, batch_size, start)

    step, preempted = start, False
    window_start, window_steps = time.perf_counter(), 0
    progress = tqdm(
        total=train_config.steps,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    with _Preemption() as preemption:
        while step < train_config.steps:
            local = next(batches)
            embeddings, mask = exp.text_encoder.encode(local["captions"])
            batch = parallel.global_batch(
                {
                    "images": local["images"],
                    "text_embeddings": np.asarray(embeddings),
                    "text_mask": np.asarray(mask),
                },
                exp.mesh,
            )
            state, metrics = train_step(state, batch, jax.random.fold_in(step_rng, step))
            step += 1
            window_steps += 1
            progress.update(1)
            if step % train_config.log_every == 0 or step == train_config.steps:
                metrics = jax.device_get(metrics)
                elapsed = time.perf_counter() - window_start
                metrics["images_per_sec"] = window_steps * batch_size / max(elapsed, 1e-9)
                writer.write(step, metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_sec']:.1f}")
                window_start, window_steps = time.perf_counter(), 0
            if preemption.requested:
                preempted = True
                break
            if step % train_config.checkpoint_every == 0 or step == train_config.steps:
                checkpointer.save(step, state, _record(exp, step))
    progress.close()
    if preempted or checkpointer.latest_step() != step:
        checkpointer.save(step, state, _record(exp, step))
    checkpointer.close()
    writer.close()
    if preempted:
        print(
            f"SIGTERM received: saved a checkpoint at step {step} in {checkpointer.directory}; "
            "run the same command again to resume."
        )
    return state, step, preempted
