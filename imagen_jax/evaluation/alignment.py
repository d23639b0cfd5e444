"""Text-image alignment on the built-in shapes data, measured by the analytic judge in data/shapes.py."""

from collections.abc import Sequence

import numpy as np

from imagen_jax.data import shapes

ATTRIBUTES: tuple[str, ...] = ("all", "shape", "colour", "size", "position")


def judge_scores(images: np.ndarray, captions: Sequence[str]) -> list[dict[str, bool]]:
    """Per image, whether it shows its caption (keys as `ATTRIBUTES`); images [N, H, W, 3], uint8 or [-1, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
    if len(captions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise ValueError("judge_accuracy needs at least one image")
    scenes = []
    for i, text in enumerate(captions):
        try:
            scenes.append(shapes.parse_caption(text))
        except ValueError as error:
            raise ValueError(f"caption {i}: {error}") from None
    return [
        shapes.score_detections(shapes.judge_image(image), scene)
        for image, scene in zip(images, scenes, strict=True)
    ]


def judge_accuracy(images: np.ndarray, captions: Sequence[str]) -> dict[str, float]:
    """Fractions of images whose every attribute ("all") and each attribute match their captions, plus
    "count" (N). images: [N, H, W, 3], uint8 or float in [-1, 1]; captions: N strings of the shapes grammar."""
    scores = judge_scores(images, captions)
    result: dict[str, float] = {key: float(np.mean([s[key] for s in scores])) for key in ATTRIBUTES}
    result["count"] = len(scores)
    return result
