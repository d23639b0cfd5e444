"""The cascade: paper-sized parameter counts (abstractly), stage training inputs, sampling the whole cascade
or part of it, and the command line training stage by stage, sampling every stage, refusing untrained ones."""

import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import (
    imagen_base64,
    imagen_sr256,
    imagen_sr1024,
    quickstart,
    shapes_cascade,
    shapes_cascade64,
)
from imagen_jax.main import main
from imagen_jax.models.imagen import ImagenFamily

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _abstract_unet_params(stage, text_length: int, text_dim: int) -> tuple[int, tuple[int, ...]]:
    """(parameter count, output shape) of a stage's U-Net on one training crop, through jax.eval_shape only."""
    crop = stage.train_crop
    x = jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.float32)
    scalar = jax.ShapeDtypeStruct((1,), jnp.float32)
    text = jax.ShapeDtypeStruct((1, text_length, text_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, text_length), jnp.bool_)
    extra = {"lowres": x, "aug_log_snr": scalar} if stage.is_super_resolution else {}

    def init_and_apply(*args, **kwargs):
        params = stage.unet.init(jax.random.key(0), *args, **kwargs)
        return params, stage.unet.apply(params, *args, **kwargs)

    params, out = jax.eval_shape(init_and_apply, x, scalar, text, mask, **extra)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nn.meta.unbox(params))), out.shape


def _block_sides(stage, size: int, text_length: int, text_dim: int) -> dict[str, int]:
    """{child module name: the side of its output} of stage's U-Net on a size x size input, traced abstractly."""
    sides = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and len(context.module.path) == 1:
            sides[context.module.name] = out.shape[1]
        return out

    x, scalar = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32)
    text = jax.ShapeDtypeStruct((1, text_length, text_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, text_length), jnp.bool_)
    extra = {"lowres": x, "aug_log_snr": scalar} if stage.is_super_resolution else {}

    def init(*args, **kwargs):
        with nn.intercept_methods(record):
            return stage.unet.init(jax.random.key(0), *args, **kwargs)

    jax.eval_shape(init, x, scalar, text, mask, **extra)
    return sides


# The paper's table (App. F.1-F.3): the side every block of a level runs at, and where the text is attended to.
# base64 (base U-Net, 64 px): levels at 64/32/16/8, self-attention with text tokens at 32/16/8.
# sr256 (Efficient U-Net, 256 px): DBlocks / UBlocks at 128/64/32/16, self-attention with text at 16 only.
# sr1024 (Efficient U-Net, trained on 256 crops, applied to 1024): 128/64/32/16 on crops and 512/256/128/64 on
# whole images, no self-attention, text cross-attention at the lowest level.
PAPER_TABLE = {
    "base64": (64, (64, 32, 16, 8), {"attn": (32, 16, 8), "cross_attn": ()}),
    "sr256": (256, (128, 64, 32, 16), {"attn": (16,), "cross_attn": ()}),
    "sr1024": (256, (128, 64, 32, 16), {"attn": (), "cross_attn": (16,)}),
}


@pytest.mark.parametrize(
    "module", [imagen_base64, imagen_sr256, imagen_sr1024], ids=["base64", "sr256", "sr1024"]
)
def test_paper_stages_run_every_block_at_the_papers_resolution(module):
    config = module.get_config()
    stage = ImagenFamily.from_config(config).train_stage
    size, level_sides, attention = PAPER_TABLE[stage.name]
    assert stage.train_crop == size
    sides = _block_sides(stage, size, config.text.max_length, config.text.t5.d_model)
    blocks = [name for name in sides if "_block" in name]
    assert blocks, sides
    for name in blocks:  # down{level}_block{i}, up{level}_block{i}, mid_block{i}
        level = len(level_sides) - 1 if name.startswith("mid") else int(name.split("_")[0][-1:])
        assert sides[name] == level_sides[level], (stage.name, name, sides[name])
    for kind, expected in attention.items():
        attended = {
            sides[name]
            for name in sides
            if name.endswith(f"_{kind}") and not (kind == "attn" and name.endswith("_cross_attn"))
        }
        assert attended == set(expected), (stage.name, kind, attended)
    assert sides["conv_out"] == size
    if stage.name == "sr1024":  # whole 1024 images at inference: every block at 4x the crop's side
        whole = _block_sides(stage, 1024, config.text.max_length, config.text.t5.d_model)
        assert [whole[name] for name in blocks] == [4 * sides[name] for name in blocks]


@pytest.mark.parametrize(
    "config",
    [
        quickstart.get_config("tiny"),
        shapes_cascade.get_config("tiny"),
        shapes_cascade64.get_config("tiny"),
        imagen_base64.get_config("tiny"),
    ],
    ids=["quickstart", "shapes_cascade", "shapes_cascade64", "imagen"],
)
def test_every_stage_of_every_tiny_config_has_the_right_output_shape(config):
    for stage in ImagenFamily.from_config(config).stages:
        _, out_shape = _abstract_unet_params(stage, config.text.max_length, config.text.t5.d_model)
        assert out_shape == (1, stage.train_crop, stage.train_crop, 3), stage.name


@pytest.mark.parametrize(
    "module, stage",
    [
        (shapes_cascade, "base16"),
        (shapes_cascade, "sr32"),
        (shapes_cascade64, "base16"),
        (shapes_cascade64, "sr64"),
    ],
)
def test_shapes_cascade_recipe_trains_each_stage_long_enough_for_its_ema(module, stage):
    """Sampling reads the EMA weights: by the end of each stage's run they must have forgotten the first
    steps' parameters (weight decay**steps on the initial ones, < 1%); 0.999 for 2000 SR steps left 14%."""
    config = module.get_config(None if stage == "base16" else stage)
    assert config.train_stage == stage
    assert {k: config.train[k] for k in module.STAGE_TRAIN[stage]} == module.STAGE_TRAIN[stage]
    assert config.train.ema_decay**config.train.steps < 0.01


def test_sr_training_inputs_are_crops_with_their_own_downsampled_condition():
    config = shapes_cascade.get_config()  # sr32: 32x32 images, 24x24 crops, 16/32 low-res scale
    config.train_stage = "sr32"
    config.stages.sr32.augmentation.max_level = 0.0  # no noise: the condition is exactly the low-res crop
    family = ImagenFamily.from_config(config)
    images = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3), minval=-1, maxval=1)
    x0, lowres, aug_log_snr = family.stage_inputs(images, jax.random.key(1))
    assert x0.shape == lowres.shape == (3, 24, 24, 3) and aug_log_snr.shape == (3,)
    offsets = []
    for i in range(3):  # each crop is a window of its own image
        hits = [
            (r, c)
            for r in range(9)
            for c in range(9)
            if np.allclose(np.asarray(images[i, r : r + 24, c : c + 24]), np.asarray(x0[i]))
        ]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # random per example
    small = jax.image.resize(x0, (3, 12, 12, 3), "linear")
    np.testing.assert_allclose(lowres, jax.image.resize(small, (3, 24, 24, 3), "linear"), atol=1e-6)
    assert float(jnp.abs(lowres - x0).max()) > 0.1  # blurred: the SR stage has something to add


def _random_params(family, stage_name, seed):
    """Stage parameters with every leaf randomised (the zero-initialised output conv would make outputs 0)."""
    stage = family.stage(stage_name)
    crop = stage.image_size
    x = jnp.zeros((1, crop, crop, 3))
    extra = {"lowres": x, "aug_log_snr": jnp.zeros((1,))} if stage.is_super_resolution else {}
    params = nn.meta.unbox(
        stage.unet.init(
            jax.random.key(seed), x, jnp.zeros((1,)), jnp.zeros((1, 4, 32)), jnp.ones((1, 4)), **extra
        )
    )["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        treedef, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def test_generate_cascade_chains_stages_and_can_start_or_stop_anywhere():
    family = ImagenFamily.from_config(shapes_cascade.get_config("tiny"))  # base16: 8x8, sr32: 8 -> 16
    params = {"base16": _random_params(family, "base16", 0), "sr32": _random_params(family, "sr32", 5)}
    text = jax.random.normal(jax.random.key(2), (2, 4, 32))
    mask = jnp.ones((2, 4), bool)
    generate = jax.jit(family.generate_cascade, static_argnames=("start", "stop"))
    out = generate(params, text, mask, jax.random.key(3))
    assert out["base16"].shape == (2, 8, 8, 3) and out["sr32"].shape == (2, 16, 16, 3)
    only_base = generate(params, text, mask, jax.random.key(3), stop="base16")
    assert list(only_base) == ["base16"]
    np.testing.assert_allclose(only_base["base16"], out["base16"], atol=1e-6)
    # Starting at the SR stage from a given image: the same image gives the same result as the chained run.
    from_image = generate(params, text, mask, jax.random.key(3), start="sr32", lowres=out["base16"])
    assert list(from_image) == ["sr32"]
    other = generate(params, text, mask, jax.random.key(3), start="sr32", lowres=-out["base16"])["sr32"]
    assert float(jnp.abs(other - from_image["sr32"]).max()) > 1e-3  # the output depends on the low-res image
    with pytest.raises(ValueError, match="needs a low-res image"):
        family.generate_cascade(params, text, mask, jax.random.key(3), start="sr32")
    with pytest.raises(ValueError, match="stop before"):
        family.generate_cascade(params, text, mask, jax.random.key(3), start="sr32", stop="base16")


def test_bad_cascades_are_named():
    config = shapes_cascade.get_config("tiny")
    config.stages.sr32.lowres_size = 4
    with pytest.raises(ValueError, match="previous stage's image_size"):
        ImagenFamily.from_config(config)
    config = shapes_cascade.get_config("tiny")
    config.train_stage = "sr64"
    with pytest.raises(ValueError, match="not a stage"):
        ImagenFamily.from_config(config)


def _run(capsys, *args):
    code = main(["imagen_jax.main", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cascade_end_to_end_stage_by_stage_on_the_command_line(tmp_path, capsys):
    tiny = str(CONFIGS / "shapes_cascade.py") + ":tiny"
    workdir = tmp_path / "wd"
    fast = ("--config.train.steps=2", "--config.sample.judge_prompts=0")
    code, out, err = _run(capsys, "--config", tiny, "--workdir", str(workdir), *fast)
    assert code == 0, err
    assert (workdir / "stages" / "base16" / "checkpoints" / "2").exists()
    assert (workdir / "samples" / "cascade_base16.png").exists()  # sampled up to the stage just trained
    # The SR stage was never trained: sampling the whole cascade is refused, naming it.
    code, _, err = _run(capsys, "--workdir", str(workdir), "--config.mode=sample")
    assert code == 2 and "'sr32'" in err and "never trained" in err and "--config.train_stage=sr32" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = _run(
        capsys, "--config", tiny, "--workdir", str(workdir), "--config.train_stage=sr32", *fast
    )
    assert code == 0, err
    assert (workdir / "stages" / "sr32" / "checkpoints" / "2").exists()
    # After training the last stage the whole cascade is sampled: every stage's images are written.
    assert "stage base16 (step 2)" in out and "stage sr32 (step 2)" in out
    for name in ("base16", "sr32"):
        assert (workdir / "samples" / f"cascade_{name}.png").exists()
    # Super-resolving a user's own image: the cascade starts at the SR stage.
    from PIL import Image

    image = tmp_path / "mine.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
    code, out, err = _run(
        capsys,
        "--workdir",
        str(workdir),
        "--config.mode=sample",
        "--config.sample.start_stage=sr32",
        f"--config.sample.lowres_image={image}",
        "--prompt",
        "a small red square",
    )
    assert code == 0, err
    assert "stage sr32" in out and "stage base16" not in out
    # mode=sample writes into sample/, never over the grids training wrote into samples/
    assert "a small red square" in (workdir / "sample" / "cascade_sr32.txt").read_text()
    assert (workdir / "sample" / "cascade_sr32.png").exists()
    assert "a small red square" not in (workdir / "samples" / "cascade_sr32.txt").read_text()
    # A different architecture is not mixed into the workdir; how a stage samples may change.
    code, _, err = _run(
        capsys, "--config", tiny, "--workdir", str(workdir), "--config.stages.sr32.model.dim=16"
    )
    assert code == 2 and "stages.sr32.model.dim" in err


def test_shapes_cascade64_tiny_trains_both_stages_and_samples_at_4x(tmp_path, capsys):
    """The 4x SR stage (the paper's ratio): trained on images whose low-res is a quarter their side, sampled on
    the base's images; both stages' grids written."""
    config = str(CONFIGS / "shapes_cascade64.py")
    workdir = tmp_path / "wd"
    fast = ("--config.train.steps=2", "--config.sample.judge_prompts=0")
    code, _, err = _run(capsys, "--config", config + ":tiny", "--workdir", str(workdir), *fast)
    assert code == 0, err
    code, out, err = _run(capsys, "--config", config + ":sr64,tiny", "--workdir", str(workdir), *fast)
    assert code == 0, err
    assert "stage base16 (step 2)" in out and "stage sr64 (step 2)" in out
    family = ImagenFamily.from_config(shapes_cascade64.get_config("sr64,tiny"))
    sr = family.stage("sr64")
    assert (sr.image_size // sr.lowres_size, sr.train_crop) == (4, 32)  # whole images
    for name in ("base16", "sr64"):
        assert (workdir / "samples" / f"cascade_{name}.png").exists()
    # The trained base serves a cascade whose SR stage differs: its checkpoint is checked against its own stage.
    other = tmp_path / "other_sr"
    shutil.copytree(workdir / "stages" / "base16", other / "stages" / "base16")
    wider = "--config.stages.sr64.model.dim=16"
    code, out, err = _run(capsys, "--config", config + ":sr64,tiny", "--workdir", str(other), wider, *fast)
    assert code == 0, err
    assert "stage base16 (step 2)" in out and "stage sr64 (step 2)" in out
