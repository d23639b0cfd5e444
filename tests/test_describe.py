"""mode=describe: per stage one JSON line with parameters, FLOPs per training example and activation memory, traced
and lowered but never compiled."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import quickstart, shapes_cascade
from imagen_jax import experiment
from imagen_jax.main import main
from imagen_jax.models.imagen import ImagenFamily
from imagen_jax.modes import describe
from imagen_jax.training import steps
from imagen_jax.training.trainer import compiled_flops

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes_cascade.py") + ":tiny"


def test_describe_prints_one_json_object_per_stage(tmp_path, capsys):
    code = main(
        ["imagen_jax.main", "--config", CONFIG, "--workdir", str(tmp_path / "wd"), "--config.mode=describe"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["stage"] for r in rows] == ["base16", "sr32"]
    config = shapes_cascade.get_config("tiny")
    for row in rows:
        config.train_stage = row["stage"]
        family = ImagenFamily.from_config(config)
        stage = family.train_stage
        # Parameters: the same number as a U-Net initialised on its own (a different code path: no train state).
        crop = stage.train_crop
        x = np.zeros((1, crop, crop, 3), np.float32)
        extra = {"lowres": x, "aug_log_snr": np.zeros((1,), np.float32)} if stage.is_super_resolution else {}
        shapes = jax.eval_shape(
            stage.unet.init,
            jax.random.key(0),
            x,
            np.zeros((1,), np.float32),
            np.zeros((1, config.text.max_length, config.text.t5.d_model), np.float32),
            np.ones((1, config.text.max_length), bool),
            **extra,
        )
        assert row["params"] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nn.meta.unbox(shapes)))
        assert row["param_bytes"] == 4 * row["params"]  # float32 parameters
        # FLOPs: at least forward + backward (about 3x) of the stem convolution's multiply-adds over the crop.
        stem = 2 * crop * crop * (3 * 9) * stage.unet.dim * (2 if stage.is_super_resolution else 1)
        assert row["flops_per_example"] > 3 * stem
        assert row["activation_bytes_per_example"] > 0
    assert (tmp_path / "wd" / "checkpoints").exists() is False  # nothing trained


def _step_and_state(variant: str | None = "tiny", remat: bool = False):
    config = quickstart.get_config(variant)
    config.model.remat = remat
    family, program = steps.from_config(config)
    size, width = config.data.image_size, config.text.t5.d_model
    batch = lambda n: jax.eval_shape(lambda: experiment.example_batch(size, config.text.max_length, width, n))
    boxed = experiment.abstract_boxed_state(family, program.optimizer, batch(1))
    return config, program, batch, nn.meta.unbox(boxed)


def test_lowered_flops_match_the_compiled_steps_count():
    """describe counts FLOPs on the lowered step (seconds on the paper's configs); XLA's count on the compiled
    step, the reference, agrees within 5% on the quickstart's U-Net (3.7% measured: fusion adds elementwise work
    the unoptimised HLO does not show; 1.3% on the 2B base, where convolutions dominate even more)."""
    config, program, batch, shapes = _step_and_state(None)
    lowered = jax.jit(program.step).lower(shapes, batch(1), jax.random.key(0))
    compiled = compiled_flops(lowered.compile())
    (row,) = describe.describe(config)
    assert row["flops_per_example"] == pytest.approx(compiled, rel=0.05)


def test_activation_estimate_is_per_example_and_falls_with_remat():
    """The residuals' batch-dependent part grows linearly with the batch (batch 3 - batch 2 = batch 2 - batch 1),
    and rematerialisation keeps fewer of them."""
    _, program, batch, shapes = _step_and_state()
    loss = program.losses["loss"]
    b1, b2, b3 = (describe.residual_bytes(loss, shapes.params, batch(n)) for n in (1, 2, 3))
    assert b2 - b1 == b3 - b2 > 0
    _, remat_program, _, _ = _step_and_state(remat=True)
    remat = describe.residual_bytes(remat_program.losses["loss"], shapes.params, batch(2))
    remat -= describe.residual_bytes(remat_program.losses["loss"], shapes.params, batch(1))
    assert remat < b2 - b1
