"""A real multi-process run: two processes on localhost, 4 simulated CPU devices each, joined by jax.distributed
(one through the config's distributed.* keys, one through experiments/launch/multinode_env.sh), resume a one-process checkpoint through the command line, train on a
mesh whose parameter shards span both processes, and save; the result must match one process fed the same
global batches."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from imagen_jax import experiment, parallel
from imagen_jax.main import main

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quickstart.py") + ":tiny"
LAUNCH_ENV = REPO / "experiments" / "launch" / "multinode_env.sh"
FLAGS = (
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.sample.sampler=ddim",
    "--config.sample.steps=1",
    "--config.sample.num_per_prompt=1",
    "--config.sample.judge_prompts=0",
    "--prompt=a large red circle at the top",
)
MESH = {
    "data": 1,
    "fsdp": 4,
    "tensor": 2,
}  # fsdp spans the two processes' devices: each holds half the shards
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(workdir: pathlib.Path, *flags: str) -> list[tuple[int, str]]:
    """Runs the CLI as processes 0 and 1 of a 2-process job; [(exit code, output)] per process. A process that
    fails or hangs ends the other (a peer left alone would wait for the coordinator until JAX's timeout)."""
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    run_flags = [*FLAGS, *flags, *(f"--config.mesh.{axis}={size}" for axis, size in MESH.items())]
    commands = [  # process 0 joins through the config's distributed.* keys, process 1 through the launch
        # script that sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
        [sys.executable, "-m", "imagen_jax.main", "--config", TINY, "--workdir", str(workdir), *run_flags]
        + [
            f"--config.distributed.coordinator_address=localhost:{port}",
            "--config.distributed.num_processes=2",
            "--config.distributed.process_id=0",
        ],
        ["bash", str(LAUNCH_ENV), f"localhost:{port}", "2", "1", TINY, str(workdir), *run_flags],
    ]
    procs, logs = [], []
    for process_id, command in enumerate(commands):
        log = open(workdir.parent / f"process_{process_id}.out", "w+")  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, log in zip(procs, logs, strict=True):
        log.seek(0)
        results.append((p.returncode, log.read()))
        log.close()
    return results


def _tree_close(a, b, atol: float) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def test_two_processes_resume_train_and_save_like_one_process_on_the_same_global_batches(tmp_path, capsys):
    workdir = tmp_path / "wd"
    # 1. This process (8 devices, mesh data=8) trains steps 1-2 and saves step 2.
    assert (
        main(
            ["imagen_jax.main", "--config", TINY, "--workdir", str(workdir), *FLAGS, "--config.train.steps=2"]
        )
        == 0
    )
    capsys.readouterr()

    # 2. Two processes resume from step 2 onto their shared mesh, train steps 3-4 and save step 4 together.
    results = _launch_two_processes(workdir, "--config.train.steps=4")
    for process_id, (code, out) in enumerate(results):
        assert code == 0, f"process {process_id} exited with {code}:\n{out}"
        assert f"jax.distributed: process {process_id} of 2" in out
        assert (
            "mesh {'data': 1, 'fsdp': 4, 'tensor': 2}, 2 process(es), 8 device(s), global batch 8, "
            "per-device batch 2" in out
        )
        assert "Resuming from the checkpoint at step 2 in" in out
        assert "process_count 1 -> 2" in out  # the data stream is not the one a 1-process run would continue
    state_dir = workdir / "checkpoints" / "4" / "state"
    assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]

    # 3. The same two steps in this one process, on the global batch the two processes assemble: process 0's
    # local batch of 4 then process 1's (each process holds the rows of its own devices on the mesh).
    config = quickstart.get_config("tiny")
    config.mesh.update(MESH)
    exp = experiment.build(config, str(workdir))
    checkpointer = exp.checkpointer()
    state, _ = exp.restore(checkpointer, 2)
    start = state
    step_rng = jax.random.key(config.seed + 1)
    train_step = jax.jit(lambda s, b: exp.program.step(s, b, jax.random.fold_in(step_rng, s.step)))
    for step in (2, 3):  # the batches of steps 3 and 4 (0-based data steps)
        parts = []
        for process_index in (0, 1):
            local = exp.dataset.batch(step, 4, process_index=process_index, split="train")
            embeddings, mask = exp.text_encoder.encode(list(local["captions"]))
            parts.append((np.asarray(local["images"], np.float32), np.asarray(embeddings), np.asarray(mask)))
        batch = {
            key: np.concatenate([part[i] for part in parts])
            for i, key in enumerate(("images", "text_embeddings", "text_mask"))
        }
        if (
            step == 2
        ):  # the rows the other way round, or process 0's data twice, do not match at this tolerance
            for wrong in (
                {key: np.concatenate([value[4:], value[:4]]) for key, value in batch.items()},
                {key: np.concatenate([value[:4], value[:4]]) for key, value in batch.items()},
            ):
                _, other = train_step(state, parallel.global_batch(wrong, exp.mesh))
                assert float(other["loss"]) != pytest.approx(logged[2]["loss"], rel=1e-5)
        state, metrics = train_step(state, parallel.global_batch(batch, exp.mesh))
        for key in ("loss", "grad_norm"):
            assert logged[step][key] == pytest.approx(float(metrics[key]), rel=1e-5), (step + 1, key)

    # 4. The checkpoint the two processes wrote restores in this one process to the same state.
    saved, record = exp.restore(checkpointer, 4)
    checkpointer.close()
    assert record["data"] == {"next_step": 4, "seed": 0, "batch_size": 8, "process_count": 2}
    assert int(saved.step) == int(state.step) == 4
    # Parameters within a fifth of one Adam step (lr 1e-3): a leaf whose exact gradient is zero (e.g. a bias
    # before a normalisation) takes eps-limited steps driven by rounding noise, which the two processes'
    # reduction order changes (seen: 2e-5). The two steps themselves move most leaves by more than twice that.
    atol = 2e-4
    _tree_close(saved.params, state.params, atol=atol)
    _tree_close(saved.ema_params, state.ema_params, atol=atol)
    _tree_close(saved.opt_state, state.opt_state, atol=atol)
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(start.params), strict=True)
    ]
    assert sum(m > 2 * atol for m in moved) > len(moved) / 2, moved
