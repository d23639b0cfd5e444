"""Alignment accuracy on known inputs: exact fractions from the scenes' own attributes."""

import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.data.shapes import ShapesDataset
from imagen_jax.evaluation.alignment import judge_accuracy


def _rendered(n: int, size: int = 32) -> tuple[list[shapes.Scene], np.ndarray]:
    rng = np.random.default_rng(4)
    scenes = ShapesDataset(size, max_objects=1, holdout_combinations=False).sample_scenes(rng, n)
    return scenes, np.stack([shapes.render(s, size, rng) for s in scenes])


def test_half_the_captions_swapped():
    n = 200
    scenes, images = _rendered(n)
    captioned = list(scenes)
    for i in range(0, n, 2):  # every other caption describes a different scene with another colour
        j = next(
            k for k in range(i + 1, i + n) if scenes[k % n].objects[0].colour != scenes[i].objects[0].colour
        )
        captioned[i] = scenes[j % n]
    result = judge_accuracy(images, [shapes.caption(s) for s in captioned])
    assert result["count"] == n
    assert result["all"] == 0.5
    assert result["colour"] == 0.5
    for key in ("shape", "size", "position"):  # a swapped caption is right on this attribute iff it agrees
        agree = [
            getattr(a.objects[0], key) == getattr(b.objects[0], key)
            for a, b in zip(scenes, captioned, strict=True)
        ]
        assert result[key] == pytest.approx(np.mean(agree), abs=1e-12)
        assert 0.5 < result[key] < 1.0


def test_uint8_and_float_inputs_agree():
    scenes, images = _rendered(40)
    captions = [shapes.caption(s) for s in scenes]
    as_float = images.astype(np.float32) / 127.5 - 1.0
    expected = {"all": 1.0, "shape": 1.0, "colour": 1.0, "size": 1.0, "position": 1.0, "count": 40}
    assert judge_accuracy(images, captions) == expected
    assert judge_accuracy(as_float, captions) == expected


def test_bad_inputs_fail_with_a_clear_message():
    _, images = _rendered(2)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        judge_accuracy(images, ["a large red circle at the top"])
    with pytest.raises(ValueError, match="caption 1"):
        judge_accuracy(images, ["a large red circle at the top", "a dog"])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        judge_accuracy(images[0], ["a large red circle at the top"])
