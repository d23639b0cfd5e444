"""The training loop shared by every family: sharded jit step, metrics and throughput, checkpoints, resume,
preemption (SIGTERM) and the stop after too many non-finite steps."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from imagen_jax import parallel
from imagen_jax.data import pipeline
from imagen_jax.errors import UserError
from imagen_jax.training.metric_writer import MetricWriter

if TYPE_CHECKING:  # the loop runs what experiment.py (a layer above) builds; no import at run time
    from imagen_jax.experiment import Experiment

PyTree = Any

# Dense bf16 peak FLOP/s of one JAX device, by a substring of jax.Device.device_kind (first match wins). A TPU v2/v3
# device is one core (half a chip); from v4 on a device is a chip. GPUs: the SXM parts unless named.
PEAK_FLOPS_BY_DEVICE_KIND: tuple[tuple[str, float], ...] = (
    ("TPU v2", 22.5e12),
    ("TPU v3", 61.5e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


class NonFiniteError(UserError):
    """Training met train.max_nonfinite_steps non-finite steps in a row (main prints the message as one line)."""


def peak_flops_per_device(configured: float, device_kind: str) -> float | None:
    """FLOP/s one device can do at best: train.peak_flops_per_device if > 0, else the table's entry for the
    device kind, else None (e.g. CPUs), in which case no model FLOP utilisation is reported."""
    if configured and configured > 0:
        return float(configured)
    for name, peak in PEAK_FLOPS_BY_DEVICE_KIND:
        if name.lower() in device_kind.lower():
            return peak
    return None


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled (SPMD) computation on one device, as XLA's cost analysis counts them
    (backward pass, optimizer and any rematerialisation included), or None when the backend does not say."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, list | tuple):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class _Preemption:
    """Whether to stop for a preemption, decided at the same step on every process.

    One process: SIGTERM sets a flag that the loop checks between steps. Several processes: JAX's preemption
    service (started by jax.distributed.initialize, which catches SIGTERM) lets every process agree on the step
    after the latest one any of them reached, so they all stop and save the same step.

    The handler stays installed until the context exits, which the trainer does only once the final save is on
    disk; after a preemption it is never removed, so a repeated SIGTERM (schedulers often send more than one)
    cannot cut that save or the orderly exit short. SIGKILL, as ever, can: the last complete checkpoint serves.
    """

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None
        self._multi = jax.process_count() > 1

    def __enter__(self):
        if not self._multi:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                self._installed = False
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Call once per step, with the number of steps done, on every process."""
        if self._multi:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._installed and not self.requested:
            signal.signal(signal.SIGTERM, self._previous)


class _NonFiniteCounter:
    """Counts the steps whose update was skipped for a NaN/inf (the step metric "nonfinite")."""

    def __init__(self, limit: int):
        self.limit, self.streak, self.first, self.in_window = limit, 0, None, 0

    def add(self, step: int, nonfinite: Any) -> bool:
        """Records step `step`'s flag; True when `limit` (> 0) skipped steps in a row are reached."""
        if float(np.asarray(nonfinite)) > 0:
            self.first = step if self.streak == 0 else self.first
            self.streak += 1
            self.in_window += 1
        else:
            self.streak = 0
        return 0 < self.limit <= self.streak


def _record(exp: Experiment, step: int) -> dict[str, Any]:
    """The JSON saved beside the arrays: the full config and where the data stream stands. The stream is a pure
    function of (seed, step, process index, per-process batch), so these few numbers are its whole state."""
    return {
        "config": exp.config.to_dict(),
        "data": {
            "next_step": step,
            "seed": exp.config.seed,
            "batch_size": int(exp.config.train.batch_size),
            "process_count": jax.process_count(),
        },
        "text_encoder": exp.text_encoder.identity,
    }


def _data_stream_note(record: dict[str, Any], exp: Experiment) -> str | None:
    """Why a resumed run's batches differ from those the saved run would have drawn next, or None."""
    data = record.get("data", {})
    now = {
        "seed": exp.config.seed,
        "batch_size": int(exp.config.train.batch_size),
        "process_count": jax.process_count(),
    }
    changed = [f"{k} {data[k]} -> {v}" for k, v in now.items() if k in data and data[k] != v]
    if not changed:
        return None
    return (
        f"Note: the data stream continues at step {data['next_step']}, but its batches differ from those of "
        f"the saved run ({', '.join(changed)}), so this is not an exact continuation."
    )


def train(exp: Experiment) -> tuple[PyTree, int, bool]:
    """Trains to config.train.steps, resuming from the latest complete checkpoint in the workdir.

    Returns (state, step reached, preempted). Saves every train.checkpoint_every steps and at the end. Raises
    NonFiniteError, after waiting for the saves in flight and saving nothing more, when train.max_nonfinite_steps
    steps in a row had a NaN/inf loss or gradient (their updates are skipped by the step's apply_gradients).
    """
    config, train_config = exp.config, exp.config.train
    checkpointer = exp.checkpointer()
    checkpointer.tidy()
    writer = MetricWriter(exp.run_dir, enabled=jax.process_index() == 0)
    latest = checkpointer.latest_step()
    data_state = None  # the Grain iterator's saved state (TFDS data); the shapes stream needs only the step
    if latest is None:
        state, start = exp.init_state(jax.random.key(config.seed)), 0
    else:
        state, record = exp.restore(checkpointer, latest)
        start = int(record["data"]["next_step"])
        if config.data.source != "shapes" and _data_stream_note(record, exp) is None:
            data_state = checkpointer.restore_data(latest)
        print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}.", flush=True)
        note = _data_stream_note(record, exp)
        if note:
            print(note, flush=True)
    # Steps logged after `start` by a run that died are replayed now: their lines go, so none is logged twice.
    writer.truncate_after(start)

    batch_size, micro_steps = train_config.batch_size, int(train_config.get("grad_accum_steps", 1))
    per_device = parallel.per_device_batch(batch_size, exp.mesh, micro_steps)
    micro_note = f" in {micro_steps} micro-batches of {per_device // micro_steps}" if micro_steps > 1 else ""
    print(
        f"mesh {dict(exp.mesh.shape)}, {jax.process_count()} process(es), {jax.device_count()} device(s), "
        f"global batch {batch_size}, per-device batch {per_device}{micro_note}",
        flush=True,
    )
    train_step = exp.jit_train_step(jax.random.key(config.seed + 1))  # the step mode=compile lowers too
    batches = pipeline.train_batches(
        exp.dataset, batch_size, start, config, exp.text_encoder.encode, data_state
    )

    def next_batch() -> dict[str, jax.Array]:
        local = next(batches)
        if "text_embeddings" in local:  # joined by the pipeline (data.text_join)
            embeddings, mask = local["text_embeddings"], local["text_mask"]
        else:
            embeddings, mask = exp.text_encoder.encode(local["captions"])
        arrays = {
            "images": local["images"],
            "text_embeddings": np.asarray(embeddings),
            "text_mask": np.asarray(mask),
        }
        return parallel.global_batch(arrays, exp.mesh)

    compiled, flops_per_step, peak = None, None, None
    nonfinite = _NonFiniteCounter(int(train_config.get("max_nonfinite_steps", 0)))
    step, preempted, stopped, saved_step = start, False, False, start
    pending = None  # (step, device "nonfinite" flag) of the last step, read once the next step is queued
    progress = None  # started once the first step has run, so its rate and ETA leave compilation out
    try:
        with _Preemption() as preemption:
            while step < train_config.steps:
                batch = next_batch()
                if compiled is None:
                    if jax.process_index() == 0:
                        print("compiling the train step ...", flush=True)
                    compiled = train_step.lower(state, batch).compile()
                    flops_per_step = compiled_flops(compiled)
                    peak = peak_flops_per_device(
                        float(train_config.get("peak_flops_per_device", 0.0)), jax.devices()[0].device_kind
                    )
                    _print_flops(flops_per_step, peak)
                    window_start, window_steps = time.perf_counter(), 0
                state, metrics = compiled(state, batch)
                step += 1
                window_steps += 1
                if progress is None:  # the first step (its run may still hold one-off costs) is done
                    jax.block_until_ready(metrics)
                    progress = _progress_bar(train_config.steps, step)
                else:
                    progress.update(1)
                # Reading the previous step's flag keeps one step queued on the devices while the host waits.
                if pending is not None and nonfinite.add(*pending):
                    stopped = True
                    break
                pending = (step, metrics["nonfinite"])
                if step % train_config.log_every == 0 or step == train_config.steps:
                    metrics = jax.device_get(metrics)
                    if nonfinite.add(*pending):
                        stopped = True
                        break
                    pending = None
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    metrics["images_per_sec"] = window_steps * batch_size / elapsed
                    metrics["nonfinite_steps"] = nonfinite.in_window
                    if flops_per_step is not None:
                        metrics["flops_per_sec"] = (
                            flops_per_step * jax.device_count() * window_steps / elapsed
                        )
                        if peak is not None:
                            metrics["mfu"] = metrics["flops_per_sec"] / (peak * jax.device_count())
                    writer.write(step, metrics)
                    losses = {k: f"{metrics[k]:.4f}" for k in ("loss", "d_loss", "g_loss") if k in metrics}
                    progress.set_postfix(**losses, img_s=f"{metrics['images_per_sec']:.1f}")
                    window_start, window_steps, nonfinite.in_window = time.perf_counter(), 0, 0
                if preemption.should_stop(step):
                    preempted = True
                    break
                if step % train_config.checkpoint_every == 0 or step == train_config.steps:
                    checkpointer.save(step, state, _record(exp, step), pipeline.iterator_state(batches))
                    saved_step = step
            if pending is not None and not stopped and nonfinite.add(*pending):
                stopped = True
            # What this run saved, not what is on disk: saves are async.
            if saved_step != step and not stopped:
                checkpointer.save(step, state, _record(exp, step), pipeline.iterator_state(batches))
            checkpointer.wait()  # on disk before the SIGTERM handler is removed
    finally:
        if progress is not None:
            progress.close()
        checkpointer.close()  # waits for the saves in flight
        writer.close()
    if stopped:
        last = checkpointer.latest_step()
        raise NonFiniteError(
            f"Stopped at step {step}: the loss or gradients were NaN/inf in {nonfinite.streak} steps in a row "
            f"(steps {nonfinite.first}-{nonfinite.first + nonfinite.streak - 1}, updates skipped; "
            f"train.max_nonfinite_steps={nonfinite.limit}). Nothing more was saved; the last checkpoint is at "
            f"step {last} in {checkpointer.directory}. Lower train.learning_rate or check the data, then resume."
        )
    if preempted:
        print(
            f"SIGTERM received: saved a checkpoint at step {step} in {checkpointer.directory}; "
            "run the same command again to resume.",
            flush=True,
        )
    return state, step, preempted


def _progress_bar(total: int, done: int) -> tqdm:
    """The console's progress bar from `done` steps on: its rate counts only the steps it sees."""
    return tqdm(
        total=total,
        initial=done,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )


def _print_flops(flops_per_step: float | None, peak: float | None) -> None:
    if flops_per_step is None:
        print("FLOPs per step: not reported by this backend (no flops_per_sec / mfu metrics).", flush=True)
        return
    peak_note = (
        f"peak {peak / 1e12:.4g} TFLOP/s per device, so mfu is reported"
        if peak
        else "peak unknown for this device (set train.peak_flops_per_device for mfu)"
    )
    print(
        f"FLOPs per step: {flops_per_step / 1e9:.4g} GFLOP per device (XLA cost analysis); {peak_note}.",
        flush=True,
    )
