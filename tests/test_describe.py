"""mode=describe: per stage one JSON line with parameters, FLOPs per training example and activation memory."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import shapes_cascade
from imagen_jax.main import main
from imagen_jax.models.imagen import ImagenFamily

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes_cascade.py") + ":tiny"


@pytest.mark.slow  # deselected by default (CI time); run with: python -m pytest -m slow
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
