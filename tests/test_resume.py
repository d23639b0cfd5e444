"""Exact resumption through the real command line: a run killed with SIGKILL after its first checkpoint and then
resumed logs exactly the metrics of an uninterrupted run; SIGTERM saves the current step and exits 0; an
asynchronous save returns before it is on disk and keeps the values it was given even when the state is donated
to the next step at once."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import composite_checkpoint_handler

from imagen_jax.training.checkpoint import COMMIT_FILE, Checkpointer, abstract_like

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quickstart.py") + ":tiny"
STEPS = 12  # long enough that a run polled for its first checkpoint is still training when it is killed
# Every step logged; a checkpoint every 2 steps; sampling after training cut to one 1-step image.
RUN_FLAGS = (
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.sample.sampler=ddim",
    "--config.sample.steps=1",
    "--config.sample.num_per_prompt=1",
    "--config.sample.judge_prompts=0",
    "--prompt=a large red circle at the top",
)
TIMING_METRICS = {"images_per_sec", "flops_per_sec", "mfu"}  # wall-clock dependent; everything else is exact
RUN_TIMEOUT_S = 480


class _Run:
    """The CLI in a child process, stdout and stderr to files in the workdir's parent."""

    def __init__(self, workdir: pathlib.Path, cache_dir: pathlib.Path, *flags: str):
        self.workdir = workdir
        workdir.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(workdir.parent / f"{workdir.name}.out", "w+")  # noqa: SIM115 - closed in finish()
        env = dict(  # conftest's 8 simulated devices are inherited
            os.environ,
            PYTHONUNBUFFERED="1",
            # Every run compiles the same train step: the first compiles it, the others load the executable.
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
        command = [sys.executable, "-m", "imagen_jax.main", "--config", TINY, "--workdir", str(workdir)]
        self.proc = subprocess.Popen(
            [*command, *RUN_FLAGS, *flags], cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        self._out.flush()
        return pathlib.Path(self._out.name).read_text()

    def wait_for(self, path: pathlib.Path, timeout: float = RUN_TIMEOUT_S) -> None:
        """Polls every 5 ms until `path` exists; fails (with the run's output) if the run ends first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {self.proc.returncode}) before {path} existed:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{path} did not appear within {timeout} s:\n{self.output()}")
            time.sleep(0.005)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
        """(exit code, output); a run still going after `timeout` is killed and fails the test."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not finish within {timeout} s:\n{self.output()}")
        output = self.output()
        self._out.close()
        return code, output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> pathlib.Path:
    """JAX's persistent compilation cache, shared by the module's runs."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> pathlib.Path:
    """The workdir of a run of STEPS steps that nothing interrupted (it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "wd"
    run = _Run(workdir, cache_dir)
    code, out = run.finish()
    assert code == 0, out
    return workdir


@pytest.fixture
def runs(cache_dir):
    """Starts CLI runs; any still alive when the test ends (failed) is killed."""
    started: list[_Run] = []

    def start(workdir: pathlib.Path, *flags: str) -> _Run:
        started.append(_Run(workdir, cache_dir, *flags))
        return started[-1]

    yield start
    for run in started:
        run.kill()


def _metrics(workdir: pathlib.Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in lines]


def _complete_steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / COMMIT_FILE).exists())


def test_sigkill_after_the_first_checkpoint_then_resume_matches_an_uninterrupted_run(
    uninterrupted, runs, tmp_path
):
    killed = runs(tmp_path / "killed")
    killed.wait_for(tmp_path / "killed" / "checkpoints" / "2")  # Orbax renames it into place when complete
    killed.proc.send_signal(signal.SIGKILL)
    code, out = killed.finish()
    assert code == -signal.SIGKILL, f"the run finished before it was killed (raise STEPS):\n{out}"
    last = max(_complete_steps(tmp_path / "killed"))
    assert 2 <= last < STEPS
    logged = [m["step"] for m in _metrics(tmp_path / "killed")]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= last  # lines past `last` are dropped

    code, out = runs(tmp_path / "killed").finish()  # the same command again
    assert code == 0, out
    assert f"Resuming from the checkpoint at step {last} in" in out

    resumed, reference = _metrics(tmp_path / "killed"), _metrics(uninterrupted)
    assert [m["step"] for m in reference] == list(range(1, STEPS + 1))
    assert resumed == reference  # loss, grad_norm, learning_rate, ...: bit for bit, steps 1..STEPS
    # The EMA parameters at the end are the same too: the sample grids drawn from them are identical.
    grid = pathlib.Path("samples") / f"step_{STEPS}.png"
    assert (tmp_path / "killed" / grid).read_bytes() == (uninterrupted / grid).read_bytes()


def test_sigterm_saves_the_current_step_and_exits_zero(uninterrupted, runs, tmp_path):
    workdir = tmp_path / "preempted"
    run = runs(workdir, "--config.train.steps=100000")
    run.wait_for(workdir / "checkpoints" / "2")
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    if run.proc.poll() is None:  # schedulers may signal twice; the second must not cut the save short
        run.proc.send_signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == 0, out
    message = [line for line in out.splitlines() if line.startswith("SIGTERM received: saved a checkpoint")]
    assert len(message) == 1, out
    step = int(message[0].split("at step ")[1].split()[0])
    assert _complete_steps(workdir)[-1] == step >= 2
    assert _metrics(workdir)[-1]["step"] == step  # the checkpoint holds the last step trained
    record = json.loads((workdir / "checkpoints" / str(step) / "record" / "metadata").read_text())
    assert record["data"]["next_step"] == step  # the resumed run reads the batches from step `step` on
    assert not (workdir / "samples").exists()  # a preempted run exits without sampling


def test_async_save_returns_before_commit_and_keeps_values_of_a_donated_state(tmp_path, monkeypatch):
    """Orbax's commit (the rename into '<step>') is held back until after save() has returned and the state has
    been donated to two jitted updates; the checkpoint must still hold the values save() was given."""
    release, finalize_threads = threading.Event(), []
    original = composite_checkpoint_handler.CompositeCheckpointHandler.finalize

    def held_finalize(self, directory):
        finalize_threads.append(threading.current_thread())
        assert release.wait(20), "save() did not return before its commit: it is not asynchronous"
        return original(self, directory)

    monkeypatch.setattr(composite_checkpoint_handler.CompositeCheckpointHandler, "finalize", held_finalize)
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    state = {"w": jax.device_put(jnp.arange(64.0), sharding), "m": jax.device_put(jnp.ones(64), sharding)}
    expected = jax.tree.map(np.array, state)
    update = jax.jit(lambda s: jax.tree.map(lambda x: x * 3.0 + 1.0, s), donate_argnums=0)

    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(5, state, {"data": {"next_step": 5}})
    assert not (tmp_path / "ckpt" / "5").exists()  # not committed: save() returned while the write goes on
    state = update(update(state))  # reuses (donates) the buffers that were just saved
    jax.block_until_ready(state)
    # Donation normally takes the saved buffers; on a loaded machine XLA may still hold them for the host copy
    # and copy instead (a warning, not an error). Either way the checkpoint must hold the values save() was given.
    release.set()
    ckpt.wait()
    assert finalize_threads and threading.main_thread() not in finalize_threads
    assert ckpt.all_steps() == [5]
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
    restored, record = ckpt.restore(5, abstract_like(shapes, {"w": sharding, "m": sharding}))
    ckpt.close()
    assert record == {"data": {"next_step": 5}}
    for key in expected:
        np.testing.assert_array_equal(np.asarray(restored[key]), expected[key])
    np.testing.assert_array_equal(np.asarray(state["w"]), expected["w"] * 9 + 4)  # the updates did run
