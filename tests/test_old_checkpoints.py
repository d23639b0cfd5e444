"""Checkpoints written before the training-step redesign (commit 4a33309) still restore and resume, except where the
network itself changed since (issue 17's Efficient U-Net): that run is refused by name, and nothing is touched.

tests/data/checkpoints_4a33309/<run>/ holds what that commit wrote for a 2-step run of each tiny config (its
config.json, the tokenizer trained on the captions, checkpoints/2): the quickstart (Adam state of one network),
the GAN (two Adam states side by side, spectral-norm vectors, a generator-only EMA) and the VQ-VAE (the EMA
codebook inside the parameters). Written by:

    python -m imagen_jax.main --config configs/<file>:<variant> --workdir <run> --config.train.steps=2 \\
        --config.train.checkpoint_every=2 --config.sample.judge_prompts=0
"""

import json
import pathlib
import shutil

import pytest

from imagen_jax.main import main

DATA = pathlib.Path(__file__).resolve().parent / "data" / "checkpoints_4a33309"
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
RUNS = {
    "qs": "quickstart.py:tiny",
    "gan": "gan_shapes.py:tiny",
    "vq": "vae_shapes.py:vq,tiny",
}


def test_a_quickstart_run_of_the_old_unet_is_refused_by_name_and_left_intact(tmp_path, capsys):
    """The quickstart's U-Net changed (issue 17: the base U-Net, model.efficient=False, and the Efficient U-Net's
    layout); its 4a33309 run cannot resume into the new network, and says why instead of failing in Orbax."""
    workdir = tmp_path / "qs"
    shutil.copytree(DATA / "qs", workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    argv = ["main", "--config", f"{CONFIGS / RUNS['qs']}", "--workdir", str(workdir)]
    assert main([*argv, "--config.train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "different experiment" in err and "model.efficient" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("run", ["gan", "vq"])
def test_an_old_checkpoint_resumes_training_with_its_whole_state(run, tmp_path, capsys):
    """Resuming restores params, optimizer state and EMA onto the new code's state layout (a mismatch in any
    leaf is an Orbax error) and trains one more step from it."""
    workdir = tmp_path / run
    shutil.copytree(DATA / run, workdir)
    argv = ["main", "--config", f"{CONFIGS / RUNS[run]}", "--workdir", str(workdir)]
    code = main([*argv, "--config.train.steps=3", "--config.sample.judge_prompts=0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Resuming from the checkpoint at step 2" in out
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [3]
    assert (workdir / "checkpoints" / "3").is_dir()
