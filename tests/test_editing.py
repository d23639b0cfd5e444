"""Editing (issue 22): image-to-image (SDEdit strength), inpainting (RePaint replacement), outpainting, checked
against invariants on random-weight tiny stages, the user's files fitted and refused at the door, and the
command line end to end on 2-step-trained tiny workdirs (an old workdir's config.json lacking the new keys too)."""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from imagen_jax import editing
from imagen_jax.main import main
from imagen_jax.models.imagen import ImagenFamily

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TINY = str(CONFIGS / "quickstart.py") + ":tiny"
SAMPLERS = ("ancestral", "ddim", "dpmpp_2m", "heun")


@pytest.fixture(scope="module")
def stage():
    """(family, random params, text, mask, an input image [16,16,3] in [-1,1]) of the tiny quickstart."""
    family = ImagenFamily.from_config(quickstart.get_config("tiny"))
    unet = family.train_stage.unet
    x = jnp.zeros((1, 16, 16, 3))
    params = nn.meta.unbox(
        unet.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1, 4, 32)), jnp.ones((1, 4)))
    )
    leaves, treedef = jax.tree.flatten(params["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        treedef, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    text = jax.random.normal(jax.random.key(2), (2, 4, 32))
    image = jnp.tanh(jax.random.normal(jax.random.key(3), (16, 16, 3)))
    return family, params, text, jnp.ones((2, 4), bool), image


def _generate(stage, **options):
    family, params, text, mask, _ = stage
    generate = jax.jit(functools.partial(family.generate_stage, "base", steps=3, **options))
    return np.asarray(generate(params, text, mask, jax.random.key(7)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_known_pixels_and_a_full_mask_is_plain_sampling(stage, sampler):
    image = stage[4]
    how = dict(sampler=sampler, eta=0.5 if sampler == "ddim" else 0.0)
    plain = _generate(stage, **how)
    # Every pixel regenerated (known_mask 0): the same noise gives the plain samples.
    full = _generate(stage, known_image=image, known_mask=jnp.zeros((16, 16, 1)), **how)
    np.testing.assert_allclose(full, plain, atol=1e-6)
    # The left half known, RePaint's resampling on: the known pixels end at the input (the last node is the
    # clean level, where the known region is the input itself), the others are generated.
    keep = jnp.zeros((16, 16, 1)).at[:, :8].set(1.0)
    half = _generate(stage, known_image=image, known_mask=keep, resample_steps=2, **how)
    np.testing.assert_allclose(half[:, :, :8], np.broadcast_to(image[:, :8], half[:, :, :8].shape), atol=1e-6)
    assert np.abs(half[:, :, 8:] - np.asarray(image[:, 8:])).mean() > 0.05


def test_strength_zero_returns_the_input_and_small_strengths_stay_near_it(stage):
    image = stage[4]
    same = _generate(stage, init_image=image, strength=0.0)
    np.testing.assert_array_equal(same, np.broadcast_to(image, same.shape))
    near = _generate(stage, init_image=image, strength=0.02, sampler="ddim")
    far = _generate(stage, init_image=image, strength=1.0, sampler="ddim")
    near_error, far_error = (float(np.abs(out - np.asarray(image)).mean()) for out in (near, far))
    assert near_error < 0.1 < far_error
    # image-to-image and inpainting together: the known pixels still end at the input
    keep = jnp.zeros((16, 16, 1)).at[4:12, 4:12].set(1.0)
    both = _generate(stage, init_image=image, strength=0.5, known_image=image, known_mask=keep)
    np.testing.assert_allclose(
        both[:, 4:12, 4:12], np.broadcast_to(image[4:12, 4:12], (2, 8, 8, 3)), atol=1e-6
    )


def test_generate_stage_refuses_edits_that_do_not_fit(stage):
    family, params, text, mask, image = stage
    call = functools.partial(family.generate_stage, "base", params, text, mask, jax.random.key(0), steps=2)
    with pytest.raises(ValueError, match="applies to an init_image"):
        call(strength=0.5)
    with pytest.raises(ValueError, match="both known_image and known_mask"):
        call(known_image=image)
    with pytest.raises(ValueError, match="does not fit stage"):
        call(init_image=image[:8, :8], strength=0.5)
    with pytest.raises(ValueError, match="resample_steps"):
        call(resample_steps=2)


def _png(path, pixels) -> str:
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
    return str(path)


def _section(**keys):
    config = quickstart.get_config("tiny")
    editing.add_sample_keys(config)
    config.sample.update(keys)
    return config.sample


def test_user_files_are_fitted_to_the_stage_or_refused_with_the_reason(tmp_path):
    rng = np.random.default_rng(0)
    photo = _png(tmp_path / "photo.png", rng.integers(0, 256, (16, 24, 3)))  # 24 wide, 16 high
    mask = np.zeros((16, 24), np.uint8)
    mask[:, 12:] = 255
    edit = editing.load_edit(
        _section(inpaint_image=photo, inpaint_mask=_png(tmp_path / "mask.png", mask)), 8, "base"
    )
    assert "24x16, centre-cropped to 16x16 and resized to 8x8 for stage 'base'" in edit.notes[0]
    assert edit.inpaint_image.shape == (8, 8, 3) and edit.known_mask.shape == (8, 8, 1)
    # the centre crop keeps columns 4..19: the mask's white half starts at column 12, i.e. 8 of 16 -> 4 of 8
    np.testing.assert_array_equal(edit.known_mask[..., 0], np.repeat([[1] * 4 + [0] * 4], 8, 0))
    grey = mask.copy()
    grey[0, 0] = 128
    with pytest.raises(editing.EditError, match="not binary: 1 of its 384 pixels"):
        editing.load_edit(_section(inpaint_image=photo, inpaint_mask=_png(tmp_path / "g.png", grey)), 8, "b")
    with pytest.raises(editing.EditError, match="must match its image"):
        small = _png(tmp_path / "small.png", mask[:8])
        editing.load_edit(_section(inpaint_image=photo, inpaint_mask=small), 8, "b")
    with pytest.raises(editing.EditError, match="needs sample.inpaint_mask"):
        editing.load_edit(_section(inpaint_image=photo), 8, "b")
    with pytest.raises(editing.EditError, match="is not a file"):
        editing.load_edit(_section(init_image=str(tmp_path / "nope.png")), 8, "b")
    # outpainting: the image shrinks into the canvas less the borders, which are regenerated
    out = editing.load_edit(_section(inpaint_image=photo, outpaint=(2, 0, 2, 0)), 8, "b")
    expected = np.zeros((8, 8))
    expected[2:6] = 1.0
    np.testing.assert_array_equal(out.known_mask[..., 0], expected)
    with pytest.raises(editing.EditError, match="leaves no room"):
        editing.load_edit(_section(inpaint_image=photo, outpaint=(4, 0, 4, 0)), 8, "b")


def _run(capsys, *args):
    code = main(["imagen_jax.main", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny quickstart trained for 2 steps whose config.json predates the editing keys."""
    workdir = tmp_path_factory.mktemp("edit") / "wd"
    assert (
        main(["imagen_jax.main", "--config", TINY, "--workdir", str(workdir), "--config.train.steps=2"]) == 0
    )
    saved = json.loads((workdir / "config.json").read_text())
    for key in (*editing.EDIT_KEYS, "eta", "spacing"):
        del saved["sample"][key]
    (workdir / "config.json").write_text(json.dumps(saved))
    return workdir


def test_sample_mode_inpaints_an_old_workdir_and_refuses_bad_edits_in_one_line(trained, tmp_path, capsys):
    image = _png(tmp_path / "in.png", np.full((32, 32, 3), 200))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    mask_path = _png(tmp_path / "mask.png", mask)
    base = ("--workdir", str(trained), "--config.mode=sample", "--config.sample.steps=2")
    edit = (f"--config.sample.inpaint_image={image}", f"--config.sample.inpaint_mask={mask_path}")
    code, out, err = _run(
        capsys, *base, *edit, "--config.sample.inpaint_resample=2", "--config.sample.sampler=ddim",
        "--config.sample.eta=0.5", "--config.sample.spacing=time",
    )  # fmt: skip
    assert code == 0, err
    assert "32x32, resized to 16x16 for stage 'base'" in out
    assert (trained / "sample" / "step_2_edit.png").is_file()
    record = json.loads((trained / "sample" / "step_2.json").read_text())
    assert record["edit"]["inpaint_resample"] == 2 and "heldout_judge" not in record
    grey = mask.copy()
    grey[0, :3] = 7
    bad = [
        ((f"--config.sample.inpaint_image={image}", f"--config.sample.inpaint_mask={_png(tmp_path / 'g.png', grey)}"),
         "not binary: 3 of its 1024 pixels"),
        ((*edit, "--config.sample.eta=0.5"), "applies to the ddim sampler only"),
        (("--config.sample.spacing=cubic",), "not a grid spacing"),
        (("--config.sample.strength=1.5",), "sample.strength=1.5 must be in [0, 1]"),
        ((*edit, "--config.mode=train"), "add --config.mode=sample"),
    ]  # fmt: skip
    for args, message in bad:
        code, _, err = _run(capsys, *base, *args)
        assert code == 2 and err.startswith("error:") and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_an_sr_stage_is_edited_on_its_own_from_its_own_input(tmp_path, capsys):
    workdir = tmp_path / "wd"
    config = str(CONFIGS / "shapes_cascade.py") + ":sr32,tiny"
    code, _, err = _run(capsys, "--config", config, "--workdir", str(workdir), "--config.train.steps=2")
    assert code == 0, err
    image = _png(tmp_path / "in.png", np.random.default_rng(1).integers(0, 256, (16, 16, 3)))
    code, out, err = _run(
        capsys, "--workdir", str(workdir), "--config.mode=sample", "--config.sample.start_stage=sr32",
        f"--config.sample.init_image={image}", "--config.sample.strength=0.0",
    )  # fmt: skip
    assert code == 0, err
    assert "input, mask and results" in out and (workdir / "sample" / "cascade_edit.png").is_file()
