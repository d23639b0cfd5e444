"""How far generated shapes images' backgrounds are from the data's: the tint a sampler or model leaves behind.

Every image of the built-in shapes data is drawn on one flat colour, data.shapes.BACKGROUND (24, 24, 24), so a
sample's background pixels should all be exactly that colour. The judge (evaluation/alignment.py) reads only the
objects and cannot see a tinted or speckled background; these numbers can.

    errors = background_error(images)     # images [N, H, W, 3], uint8 or float in [-1, 1]
    errors["tint"]    # mean over images of |mean background colour - BACKGROUND| (Euclidean, 0..255 units)
    errors["rms"]     # mean over images of the background pixels' RMS distance from BACKGROUND (0..255 units)

A pixel is background when neither it nor any of its 8 neighbours is further than OBJECT_THRESHOLD from
BACKGROUND in any channel (objects are saturated palette colours, >= 100 away; their anti-aliased edges touch a
pixel that far). The data's own images score exactly 0 on both.
"""

import numpy as np
from scipy import ndimage

from imagen_jax.data import shapes

# A channel this far (0..255) from the background marks an object pixel; a tint of a few units stays below it.
OBJECT_THRESHOLD = 32.0

_BACKGROUND = np.asarray(shapes.BACKGROUND, np.float64)


def background_mask(image: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels of one image ([H, W, 3] in 0..255) that no object reaches."""
    near_object = np.abs(image - _BACKGROUND).max(axis=-1) > OBJECT_THRESHOLD
    return ~ndimage.binary_dilation(near_object, structure=np.ones((3, 3), bool))


def background_offsets(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [M, 3], rms [M]): per image that has a background pixel (M <= N of images [N, H, W, 3], uint8 or
    float in [-1, 1]), its background's mean colour minus BACKGROUND and its pixels' RMS distance (0..255 units).
    The offsets' mean over images is a cast shared by all samples (a bias); their spread, each sample's own."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
    offsets, rms = [], []
    for image in images:
        pixels = shapes.to_uint8_scale(image).astype(np.float64)
        background = pixels[background_mask(pixels)] - _BACKGROUND  # [P, 3]
        if len(background) == 0:
            continue
        offsets.append(background.mean(axis=0))
        rms.append(float(np.sqrt((background**2).sum(axis=1).mean())))
    return np.reshape(offsets, (-1, 3)), np.asarray(rms, np.float64)


def summarize_offsets(offsets: np.ndarray, rms: np.ndarray) -> dict[str, float]:
    """background_error from background_offsets' (offsets [M, 3], rms [M]), for a caller that also keeps them."""
    if not len(rms):
        raise ValueError("no image has a background pixel to measure (every pixel is near an object)")
    tints = np.linalg.norm(offsets, axis=1)
    return {"tint": float(tints.mean()), "rms": float(rms.mean()), "count": len(rms)}


def background_error(images: np.ndarray) -> dict[str, float]:
    """{"tint", "rms", "count"}: the mean over images of their background's colour offset and RMS deviation
    from the data's background (0..255 units; see the module docstring), and how many images had a background
    to measure (an image that objects cover entirely has none and is left out)."""
    return summarize_offsets(*background_offsets(images))
