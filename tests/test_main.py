"""The entry point end to end on the tiny quickstart: train, resume, sample, and every bad input as one line."""

import json
import os
import pathlib
import shutil

import pytest

from imagen_jax.main import main

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py")
TINY = CONFIG + ":tiny"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["imagen_jax.main", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _logged_steps(workdir: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for 4 steps: (workdir, stdout)."""
    workdir = tmp_path_factory.mktemp("run") / "wd"
    code = main(["imagen_jax.main", "--config", TINY, "--workdir", str(workdir)])
    assert code == 0
    return workdir


def test_train_writes_checkpoints_metrics_and_samples(trained):
    assert (trained / "config.json").exists()
    assert sorted(os.listdir(trained / "checkpoints")) == ["2", "4"]  # keep_checkpoints=2, every 2 steps
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert {"step", "loss", "learning_rate", "images_per_sec", "grad_norm"} <= set(r)
        assert r["loss"] > 0 and r["images_per_sec"] > 0
    assert (trained / "samples" / "step_4.png").exists()
    captions = (trained / "samples" / "step_4.txt").read_text()
    assert "a large red circle at the top" in captions
    assert (trained / "text" / "spiece.model").exists()
    assert list((trained / "tensorboard").iterdir())


def test_rerun_resumes_and_sample_mode_reads_the_saved_config(trained, tmp_path, capsys):
    workdir = tmp_path / "wd"
    shutil.copytree(trained, workdir)
    code, out, err = _run(capsys, "--config", TINY, "--workdir", str(workdir), "--config.train.steps=6")
    assert code == 0
    assert "Resuming from the checkpoint at step 4" in out
    # the progress bar starts once the first step (compiled and run) is done: its rate leaves compilation out
    assert "compiling the train step ..." in out
    assert "| 5/6 [" in err and "| 4/6 [" not in err
    assert _logged_steps(workdir) == [2, 4, 6]
    judge_lines = [line for line in out.splitlines() if line.startswith("judge accuracy:")]
    assert len(judge_lines) == 1
    accuracy = float(judge_lines[0].split()[2])
    assert 0.0 <= accuracy <= 1.0
    # No --config: the workdir's saved config is used; --prompt replaces the grid prompts.
    code, out, err = _run(
        capsys,
        "--workdir",
        str(workdir),
        "--config.mode=sample",
        "--config.sample.steps=2",
        "--prompt",
        "a small red square on the left",
    )
    assert code == 0, err
    # mode=sample writes into sample/, apart from the grid the training run wrote into samples/
    grid = (workdir / "sample" / "step_6.txt").read_text()
    assert "a small red square on the left" in grid and "circle" not in grid
    assert "a large red circle at the top" in (workdir / "samples" / "step_6.txt").read_text()  # kept


@pytest.mark.parametrize(
    "args, message",
    [
        (("--config.train.no_such_key=1",), "no_such_key"),
        (("--config.train.steps=many",), "steps"),
        (("--config.sample.prompts=()",), "sample.prompts is empty"),
        (("--config.sample.sampler=euler_a",), "euler_a"),
        (("--config.sample.dynamic_threshold_percentile=0.995",), "looks like a quantile"),
        (("--config.mode=paint",), "paint"),
    ],
)
def test_bad_overrides_fail_at_once_with_one_line(tmp_path, capsys, args, message):
    code, out, err = _run(capsys, "--config", TINY, "--workdir", str(tmp_path / "wd"), *args)
    assert code == 2
    assert err.startswith("error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_missing_config_file_and_file_workdir(tmp_path, capsys):
    code, _, err = _run(capsys, "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "wd"))
    assert code == 2 and "nope.py does not exist" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _run(capsys, "--config", TINY, "--workdir", str(afile))
    assert code == 2 and "is a file" in err
    code, _, err = _run(capsys, "--workdir", str(tmp_path / "empty"))
    assert code == 2 and "--config is required" in err
    code, _, err = _run(
        capsys, "--config", TINY, "--workdir", str(tmp_path / "untrained"), "--config.mode=sample"
    )
    assert code == 2 and "no checkpoint" in err


def test_a_different_experiment_is_not_mixed_into_a_workdir(trained, tmp_path, capsys):
    workdir = tmp_path / "wd"
    shutil.copytree(trained, workdir)
    code, _, err = _run(capsys, "--config", TINY, "--workdir", str(workdir), "--config.model.dim=16")
    assert code == 2 and "model.dim: 8 -> 16" in err


def test_damaged_checkpoint_gives_one_line_and_keeps_the_run(trained, tmp_path, capsys):
    workdir = tmp_path / "wd"
    shutil.copytree(trained, workdir)
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    code, _, err = _run(capsys, "--config", TINY, "--workdir", str(workdir), "--config.train.steps=6")
    assert code == 2
    assert "step 4" in err and "cannot be read" in err and len(err.strip().splitlines()) == 1
    assert (workdir / "checkpoints" / "2").exists()  # nothing was deleted or overwritten


def test_encode_text_mode_fills_the_cache_that_training_reads(tmp_path, capsys):
    from imagen_jax import experiment
    from imagen_jax import workdir as workdir_lib
    from imagen_jax.text.encoder import CachedTextEncoder

    workdir = tmp_path / "wd"
    code, out, err = _run(capsys, "--config", TINY, "--workdir", str(workdir), "--config.mode=encode_text")
    assert code == 0, err
    assert "distinct captions cached in" in out
    config = workdir_lib.saved_config(str(workdir))
    config.mode = "train"
    exp = experiment.build(config, str(workdir))
    assert isinstance(exp.text_encoder, CachedTextEncoder)
    model = exp.text_encoder.encoder
    prompts = [""] + list(config.sample.prompts) + exp.dataset.caption_corpus()[:100]
    cached_embeddings, cached_mask = exp.text_encoder.encode(prompts)
    assert model.num_model_calls == 0  # all read from the cache
    embeddings, mask = model.encode(prompts)  # the same numbers from T5 itself
    assert model.num_model_calls == 1
    assert (cached_mask == mask).all()
    assert abs(cached_embeddings - embeddings).max() < 1e-5
    # a batch with one caption outside the cache runs T5 on that caption only
    mixed_embeddings, _ = exp.text_encoder.encode([prompts[1], "a purple purple circle"])
    assert model.num_model_calls == 2
    assert abs(mixed_embeddings[0] - embeddings[1]).max() < 1e-5
