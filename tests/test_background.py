"""evaluation/background.py: the data's own images score 0; a known offset or noise gives its closed form."""

import math

import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation.background import (
    OBJECT_THRESHOLD,
    background_error,
    background_mask,
    background_offsets,
)


@pytest.mark.parametrize(("size", "objects"), [(16, 1), (32, 2)])
def test_the_datas_own_images_have_no_background_error(size, objects):
    images = shapes.ShapesDataset(size, max_objects=objects).batch(0, 64)["images"]  # float in [-1, 1]
    as_float = background_error(images)
    as_uint8 = background_error(np.round((images + 1) * 127.5).astype(np.uint8))
    assert as_uint8 == {"tint": 0.0, "rms": 0.0, "count": 64}
    assert as_float["tint"] < 1e-4 and as_float["rms"] < 1e-4


def test_a_uniform_offset_is_measured_as_tint_and_rms():
    images = shapes.ShapesDataset(16).batch(1, 32)["images"]
    uint8 = np.round((images + 1) * 127.5)
    shifted = np.clip(uint8 + np.array([5.0, -3.0, 0.0]), 0, 255).astype(np.uint8)
    errors = background_error(shifted)
    assert errors["tint"] == pytest.approx(math.sqrt(34.0), abs=1e-9)
    assert errors["rms"] == pytest.approx(math.sqrt(34.0), abs=1e-9)


def test_zero_mean_noise_is_rms_without_tint():
    image = np.full((1, 16, 16, 3), shapes.BACKGROUND, np.float64)
    checker = np.where((np.arange(16)[:, None] + np.arange(16)[None, :]) % 2 == 0, 4.0, -4.0)
    image += checker[None, :, :, None]
    errors = background_error(image.astype(np.uint8))
    assert errors["tint"] == pytest.approx(0.0, abs=1e-12)
    assert errors["rms"] == pytest.approx(4.0 * math.sqrt(3.0))


def test_offsets_split_a_shared_cast_from_each_samples_own():
    """Backgrounds shifted by +c and -c: the offsets average to 0 (no shared cast), yet each has tint |c|."""
    images = np.round((shapes.ShapesDataset(16).batch(2, 8)["images"] + 1) * 127.5)
    cast = np.array([6.0, 0.0, -2.0])
    images[:4] += cast
    images[4:] -= cast
    offsets, rms = background_offsets(np.clip(images, 0, 255).astype(np.uint8))
    np.testing.assert_allclose(offsets[:4], np.broadcast_to(cast, (4, 3)), atol=1e-9)
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(rms, math.sqrt(40.0), atol=1e-9)


def test_object_pixels_and_their_neighbours_are_not_background():
    image = np.full((8, 8, 3), shapes.BACKGROUND, np.float64)
    image[3, 3] = (200, 30, 30)  # an object pixel
    image[3, 4] = (
        np.asarray(shapes.BACKGROUND) + OBJECT_THRESHOLD - 1
    )  # an anti-aliased edge, under the threshold
    mask = background_mask(image)
    assert not mask[2:5, 2:5].any()
    assert mask.sum() == 64 - 9
    # The edge pixel is next to the object, so it does not count: the background is exact.
    assert background_error(image[None].astype(np.uint8)) == {"tint": 0.0, "rms": 0.0, "count": 1}


def test_an_image_without_background_is_refused():
    covered = np.full((1, 4, 4, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="no image has a background"):
        background_error(covered)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        background_error(np.zeros((4, 4, 3), np.uint8))


def test_the_report_after_training_measures_the_heldout_backgrounds(tmp_path, monkeypatch):
    """sample_and_judge's held-out samples get their background error beside the judge's accuracy (and in
    step_<n>.json): here "samples" that are the data's own images, their backgrounds shifted by (5, -3, 0)."""
    from configs import quickstart
    from imagen_jax import experiment, sample

    config = quickstart.get_config("tiny")
    config.sample.judge_prompts = 6
    exp = experiment.build(config, str(tmp_path / "wd"))
    size = int(config.data.image_size)

    def fake_generate(exp, params, prompts, rng, **_):
        images = shapes.ShapesDataset(size).batch(3, len(prompts))["images"]
        return np.clip(images + np.array([10.0, -6.0, 0.0]) / 255.0, -1.0, 1.0)  # 0..255: (5, -3, 0)

    monkeypatch.setattr(sample, "generate_for_prompts", fake_generate)
    report = sample.sample_and_judge(exp, None, step=0)
    assert report["heldout_background"]["count"] == 6
    assert report["heldout_background"]["tint"] == pytest.approx(math.sqrt(34.0), abs=1e-3)
    line = sample.format_background("held-out backgrounds", report["heldout_background"])
    assert line.startswith("held-out backgrounds: tint 5.8, RMS 5.8 (") and "6 samples" in line
    assert sample.format_background("held-out backgrounds", None).endswith(
        "n/a (no sample has a background pixel left)"
    )
