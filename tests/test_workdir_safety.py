"""Nothing lost, whatever the user or the machine does (issue 20), on the tiny quickstart: a second writer is refused
by the workdir lock while the first finishes intact; sample and eval name the keys of a different config instead of
blaming an intact checkpoint; the metrics log heals; every bad input (non-finite numbers, file-system trouble, config
files and variants, sizes beyond memory) is refused at the door, before anything is created, with one line; internal
errors keep their traceback."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import checks, workdir_lock
from imagen_jax.main import main
from imagen_jax.training.checkpoint import COMMIT_FILE, Checkpointer, CheckpointError, abstract_like
from imagen_jax.training.metric_writer import MetricWriter

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quickstart.py") + ":tiny"
FAST_SAMPLING = (  # one 1-step image after training
    "--config.sample.sampler=ddim",
    "--config.sample.steps=1",
    "--config.sample.num_per_prompt=1",
    "--config.sample.judge_prompts=0",
    "--prompt=a large red circle at the top",
)
TIMEOUT_S = 480


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["imagen_jax.main", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, *args: str) -> str:
    """The one error line of a run that must be refused (exit status 2)."""
    code, _, err = _run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _steps(workdir: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    """A tiny run trained for 4 steps (checkpoints 2 and 4, metrics at steps 2 and 4); tests copy it."""
    workdir = tmp_path_factory.mktemp("trained") / "wd"
    assert main(["m", "--config", TINY, "--workdir", str(workdir), *FAST_SAMPLING]) == 0
    return workdir


@pytest.fixture
def copy(trained, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "wd"
    shutil.copytree(trained, workdir)
    return workdir


# ------------------------------------------------------------------------------------------------ the lock


def test_two_trainings_into_one_workdir_the_second_is_refused_and_the_first_finishes_intact(tmp_path, capsys):
    workdir = tmp_path / "wd"
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # conftest's 8 simulated devices are inherited
    command = [sys.executable, "-m", "imagen_jax.main", "--config", TINY, "--workdir", str(workdir)]
    # Checkpoints 50 steps apart: the reader below restores one long before the run deletes it (it keeps 2).
    flags = [
        "--config.train.steps=100000",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=50",
    ]
    logs = [open(tmp_path / f"{name}.out", "w+") for name in ("first", "second")]  # noqa: SIM115
    first = subprocess.Popen([*command, *flags], cwd=REPO, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (workdir / "checkpoints" / "50" / COMMIT_FILE).exists():  # training, holding the lock
            assert first.poll() is None, (tmp_path / "first.out").read_text()
            assert time.monotonic() < deadline, (tmp_path / "first.out").read_text()
            time.sleep(0.05)
        second = subprocess.run(
            [*command, *flags], cwd=REPO, env=env, stdout=logs[1], stderr=subprocess.STDOUT, timeout=TIMEOUT_S
        )
        refusal = (tmp_path / "second.out").read_text()
        assert second.returncode == 2, refusal
        assert f"error: {workdir} is in use by pid {first.pid} (started " in refusal
        assert first.poll() is None  # the first run was never disturbed

        # A reader meanwhile: sample mode reads the running workdir and writes into its own folder.
        code, out, err = _run(capsys, "--workdir", str(workdir), "--config.mode=sample", *FAST_SAMPLING)
        assert code == 0, err
        assert list((workdir / "sample").glob("step_*.png")) and not (workdir / "samples").exists()

        first.send_signal(signal.SIGTERM)  # the first run ends: it saves the step it reached and exits 0
        assert first.wait(TIMEOUT_S) == 0, (tmp_path / "first.out").read_text()
    finally:
        if first.poll() is None:
            first.kill()
        for log in logs:
            log.close()
    output = (tmp_path / "first.out").read_text()
    saved = [line for line in output.splitlines() if line.startswith("SIGTERM received: saved a checkpoint")]
    step = int(saved[0].split("at step ")[1].split()[0])
    assert _steps(workdir) == list(range(1, step + 1))  # every step logged once, none twice
    checkpoints = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert str(step) in checkpoints and all(name.isdigit() for name in checkpoints)  # no temporary folders
    assert all((workdir / "checkpoints" / name / COMMIT_FILE).exists() for name in checkpoints)
    # Intact: sample mode restores the last checkpoint (a damaged one would be refused).
    code, out, err = _run(capsys, "--workdir", str(workdir), "--config.mode=sample", *FAST_SAMPLING)
    assert code == 0, err
    assert f"at step {step}" in out and (workdir / "sample" / f"step_{step}.png").exists()
    assert (workdir / workdir_lock.LOCK_FILE).read_text() == ""  # released cleanly


_HOLDER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from imagen_jax import workdir_lock
workdir_lock.acquire({workdir!r}, "train")
child = 0
if {fork}:
    child = os.fork()
    if child == 0:  # a child (e.g. a data-loader worker) that outlives its parent
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        time.sleep(120)
        os._exit(0)
print("locked", child, flush=True)
os._exit(0)  # dies holding the lock, as after SIGKILL: nothing released it
"""


def _holder(workdir: pathlib.Path, fork: bool) -> tuple[int, int]:
    """Runs a process that locks `workdir` and dies without releasing it; (its pid, its live child's or 0)."""
    script = _HOLDER.format(repo=str(REPO), workdir=str(workdir), fork=fork)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "locked" in done.stdout, done.stderr
    child = int(done.stdout.split()[-1])
    return json.loads((workdir / workdir_lock.LOCK_FILE).read_text())["pid"], child


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    fd = workdir_lock.acquire(str(tmp_path / "wd"), "train")
    try:
        with pytest.raises(workdir_lock.WorkdirInUse, match=rf"in use by pid {os.getpid()} \(started "):
            workdir_lock.acquire(str(tmp_path / "wd"), "encode_text")
    finally:
        workdir_lock.release(fd)
    with pytest.raises(RuntimeError, match="boom"), workdir_lock.hold(str(tmp_path / "wd"), "train"):
        raise RuntimeError("boom")
    workdir_lock.release(workdir_lock.acquire(str(tmp_path / "wd"), "train"))  # released on any exit


@pytest.mark.parametrize("fork", [False, True], ids=["dead", "dead-with-a-live-child"])
def test_a_dead_holders_lock_is_stale_and_taken_over_with_a_note(tmp_path, capsys, fork):
    workdir = tmp_path / "wd"
    dead, child = _holder(workdir, fork)
    try:
        if child:
            os.kill(child, 0)  # still alive
        fd = workdir_lock.acquire(str(workdir), "train")  # the child of a forking holder does not keep it
        workdir_lock.release(fd)
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
    out = capsys.readouterr().out
    assert f"last locked by pid {dead}" in out and "ended without releasing it" in out


def test_child_processes_do_not_inherit_the_lock(tmp_path):
    fd = workdir_lock.acquire(str(tmp_path), "train")
    try:
        child = subprocess.run(
            ["ls", f"/proc/self/fd/{fd}"], capture_output=True, timeout=60, close_fds=False
        )
        assert child.returncode != 0  # the descriptor is closed on exec
    finally:
        workdir_lock.release(fd)


# ---------------------------------------------------------------- sample and eval with another experiment


def test_sample_and_eval_with_another_config_name_the_keys_and_keep_the_checkpoint(copy, capsys):
    before = sorted(p.name for p in (copy / "checkpoints").iterdir())
    other = str(
        REPO / "configs" / "quickstart.py"
    )  # the full-size quickstart, not the :tiny one trained here
    for mode in ("sample", "eval"):
        line = _refused(capsys, "--config", other, "--workdir", str(copy), f"--config.mode={mode}")
        assert "another experiment" in line and "text.t5.d_model: 32 -> 64" in line
        assert "Delete" not in line and "cannot be read" not in line
    line = _refused(capsys, "--workdir", str(copy), "--config.mode=sample", "--config.model.dim=16")
    assert "model.dim: 8 -> 16" in line and "Delete" not in line
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before


def test_a_hand_edit_of_config_json_is_named_not_blamed_on_the_checkpoint(copy, capsys):
    config = json.loads((copy / "config.json").read_text())
    config["model"]["dim"] = 16  # a model shape the checkpoint does not have
    (copy / "config.json").write_text(json.dumps(config))
    line = _refused(capsys, "--workdir", str(copy), "--config.mode=sample", *FAST_SAMPLING)
    assert "checkpoint at step 4" in line and "model.dim: 8 -> 16" in line and "intact" in line
    assert "Delete" not in line
    assert (copy / "checkpoints" / "4" / COMMIT_FILE).exists()


def test_resuming_with_another_optimizer_names_it(copy, capsys):
    line = _refused(capsys, "--config", TINY, "--workdir", str(copy), "--config.train.optimizer=adafactor")
    assert "train.optimizer: 'adam' -> 'adafactor'" in line and "Delete" not in line


def test_a_checkpoint_of_another_layout_is_not_called_damaged(tmp_path):
    """The restore of an intact checkpoint onto another state layout fails in Orbax; the message says what
    differs and never advises deleting it."""
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    ckpt.save(3, {"w": jnp.arange(8.0)}, {"data": {"next_step": 3}})
    ckpt.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(CheckpointError) as error:
        ckpt.restore(3, abstract_like({"w": jax.ShapeDtypeStruct((16,), jnp.float32)}, {"w": sharding}))
    assert "w: (8,) saved, (16,) here" in str(error.value) and "intact" in str(error.value)
    assert "Delete" not in str(error.value)
    restored, _ = ckpt.restore(
        3, abstract_like({"w": jax.ShapeDtypeStruct((8,), jnp.float32)}, {"w": sharding})
    )
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(8.0))
    ckpt.close()


# ------------------------------------------------------------------------------------ the metrics log heals


def test_a_partial_last_metrics_line_and_stale_save_folders_do_not_block_a_resume(copy, capsys):
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.4, "learning_r')  # a kill during a log write
    (copy / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()  # a save cut short
    (copy / "checkpoints" / "8").mkdir()  # a copy cut short: no commit file
    code, out, err = _run(
        capsys, "--config", TINY, "--workdir", str(copy), "--config.train.steps=6", *FAST_SAMPLING
    )
    assert code == 0, err
    assert "dropped its last line" in out and out.count("metrics.jsonl") == 1
    assert _steps(copy) == [2, 4, 6]
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert "6.orbax-checkpoint-tmp-1234" not in names and "8.incomplete" in names
    assert f"rm -r {copy / 'checkpoints' / '8.incomplete'}" in out


def test_truncate_after_keeps_each_step_once_and_drops_what_cannot_be_read(tmp_path, capsys):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(lines[:3]) + "\nnot json\n" + lines[3] + "\n" + lines[3][:9]
    )
    writer = MetricWriter(str(tmp_path))
    writer.truncate_after(2)  # a resume from the checkpoint at step 2: steps 3 and 4 will be logged again
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert "line(s) 4, 6" in capsys.readouterr().out
    writer.write(3, {"loss": 0.5})
    assert _steps(tmp_path) == [1, 2, 3]
    writer.close()
    MetricWriter(str(tmp_path)).truncate_after(0)  # a fresh start: a dead run's lines all go
    assert (tmp_path / "metrics.jsonl").read_text() == ""


# ------------------------------------------------------------------------------------ the door


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.sample.guidance_scale=nan", "sample.guidance_scale=nan is not a finite number"),
        ("--config.train.learning_rate=inf", "train.learning_rate=inf is not a finite number"),
        ("--config.sample.guidance_scale=-1.0", "sample.guidance_scale=-1.0 must be >= 0"),
        ("--config.train.ema_decay=1.5", "train.ema_decay=1.5 must be in [0, 1]"),
        ("--config.diffusion.cond_drop_prob=-0.1", "diffusion.cond_drop_prob=-0.1 must be in [0, 1]"),
        ("--config.diffusion.offset_noise=-0.1", "diffusion.offset_noise=-0.1 must be >= 0"),
        ("--config.train.batch_size=7", "train.batch_size=7 must be divisible by data x fsdp = 8"),
        ("--config.sample.num_per_prompt=100000", "sample.num_per_prompt <= 3289"),
        ("--config.train.stepz=3", '--config.train.stepz: no such key in the config (Did you mean "steps"'),
    ],
)
def test_bad_numbers_and_keys_are_refused_before_anything_is_created(tmp_path, capsys, flag, message):
    start = time.monotonic()
    line = _refused(capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"), flag)
    assert message in line and "\\n" not in line and "\\'" not in line
    assert not (tmp_path / "wd").exists()
    assert time.monotonic() - start < 60  # at once, not after a memory climb


def test_sizes_beyond_the_memory_available_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 40_000_000)  # 40 MB
    # One batch of 4096 16x16 images and their 16x32 text embeddings: 4096 x (3 KB + 2 KB) = 21 MB > 20 MB.
    line = _refused(
        capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"), "--config.train.batch_size=4096"
    )
    assert "train.batch_size=4096" in line and "0.04 GB is available" in line
    line = _refused(
        capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"), "--config.sample.judge_prompts=9000"
    )
    assert "sample.judge_prompts=9000" in line
    assert not (tmp_path / "wd").exists()


def test_file_system_trouble_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = _refused(capsys, "--config", TINY, "--workdir", str(afile / "wd"))
    assert line == f"error: cannot create {afile / 'wd'}: {afile} is a file, not a directory."
    long = tmp_path / ("x" * 300) / "wd"
    line = _refused(capsys, "--config", TINY, "--workdir", str(long))
    assert line.startswith(f"error: cannot create {long}: the name xxx") and "300 bytes long" in line
    # An unwritable parent (the tests run as root, who may write anywhere: access() is what the door asks).
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path) else real_access(p, mode, **kw)
    )
    line = _refused(capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"))
    assert line == f"error: cannot create {tmp_path / 'wd'}: Permission denied in {tmp_path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    monkeypatch.undo()
    # A file-system error after the door (here: the disk fills up as config.json is written) is one line too.
    from imagen_jax import workdir as workdir_lib

    def full_disk(workdir, config):
        raise OSError(28, "No space left on device", os.path.join(workdir, "config.json"))

    monkeypatch.setattr(workdir_lib, "prepare_for_training", full_disk)
    line = _refused(capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"))
    assert line == f"error: cannot write {tmp_path / 'wd' / 'config.json'}: No space left on device"


def test_config_file_and_variant_errors_keep_their_reason(tmp_path, capsys):
    line = _refused(
        capsys, "--config", str(REPO / "configs" / "quickstart.py") + ":nope", "--workdir", str(tmp_path)
    )
    assert "Unknown config variant 'nope'; known variants: tiny" in line
    no_train = tmp_path / "no_train.py"
    no_train.write_text(
        textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("qs", {str(REPO / "configs" / "quickstart.py")!r})
        qs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(qs)

        def get_config(arg=None):
            config = qs.get_config("tiny")
            del config["train"]
            return config
        """)
    )
    line = _refused(capsys, "--config", str(no_train), "--workdir", str(tmp_path / "wd"))
    assert line == f"error: --config {no_train} has no train section (config.train); every config needs one."
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return undefined_name\n")
    line = _refused(capsys, "--config", str(broken), "--workdir", str(tmp_path / "wd"))
    assert "(line 2): NameError" in line and "undefined_name" in line


def test_a_wrong_type_in_a_hand_edited_config_json_names_the_key_and_the_file(copy, capsys):
    config = json.loads((copy / "config.json").read_text())
    config["train"]["steps"] = "many"
    (copy / "config.json").write_text(json.dumps(config))
    line = _refused(capsys, "--workdir", str(copy))
    assert line == f"error: train.steps='many' in {copy / 'config.json'} must be an integer, not str."


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    """A ValueError raised by a bug (not deliberately, for the user) is not turned into one line."""
    from imagen_jax import experiment

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(experiment, "build", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["m", "--config", TINY, "--workdir", str(tmp_path / "wd")])
