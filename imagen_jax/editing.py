"""Editing with a diffusion stage: a user's images and masks, read, checked and fitted to the stage they edit.

    sample.init_image + sample.strength        image-to-image (SDEdit): redo that share of the diffusion
    sample.inpaint_image + sample.inpaint_mask inpainting: white mask pixels are regenerated, the rest kept
    sample.outpaint = (top, right, bottom, left) outpainting: the image shrinks into the canvas less these
                                               borders (stage pixels), which are regenerated
    sample.inpaint_resample                    RePaint's resampling: each step repeated this many times

The stage does the diffusion (models/imagen.py, generate_stage's EDIT_OPTIONS, as arrays); this module reads the
files, centre-crops and resizes them to the stage (saying so), refuses a mask that is not binary or not the size
of its image, and builds the known-pixel mask. EDIT_DEFAULTS is the one table of these keys' defaults;
add_sample_keys puts them (and the stage sampling settings eta / spacing) into configs written before they
existed, so that --config.sample.<key> overrides work on every imagen workdir."""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from imagen_jax.errors import UserError
from imagen_jax.evaluation.grid import write_grid
from imagen_jax.models.imagen import SAMPLE_DEFAULTS

EDIT_DEFAULTS: dict[str, Any] = dict(
    init_image="",  # a PNG / JPEG to start from (image-to-image); "": none
    strength=0.75,  # with init_image: the share of the diffusion redone, 0 (the input) .. 1 (all of it)
    inpaint_image="",  # a PNG / JPEG whose unmasked pixels are kept; "": none
    inpaint_mask="",  # a black-and-white PNG of inpaint_image's size: white = regenerate
    inpaint_resample=1,  # RePaint: every step re-noised and repeated this many times in all (1: off)
    outpaint=(0, 0, 0, 0),  # (top, right, bottom, left) stage pixels of canvas around inpaint_image to fill
)
EDIT_KEYS = tuple(EDIT_DEFAULTS)


class EditError(UserError):
    """An editing input that cannot be used (a missing file, a mask that is not binary or does not match)."""


def add_sample_keys(config: ml_collections.ConfigDict) -> None:
    """Adds the editing keys (EDIT_DEFAULTS) to an imagen config's top-level sample section and the stage
    sampling settings (eta, spacing: SAMPLE_DEFAULTS) to every stage's, where they are missing; in place."""
    if config.get("family") != "imagen" or not isinstance(config.get("sample"), ml_collections.ConfigDict):
        return
    for key, value in EDIT_DEFAULTS.items():
        if key not in config.sample:
            config.sample[key] = value
    sections = (
        [config.stages[name].sample for name in config.stages] if "stages" in config else [config.sample]
    )
    for section in sections:
        for key, value in SAMPLE_DEFAULTS.items():
            if key not in section:
                section[key] = value


def edit_requested(sample: ml_collections.ConfigDict) -> bool:
    """True when the sample section asks for an edit (an init or inpaint image, or a mask)."""
    return any(sample.get(key, "") for key in ("init_image", "inpaint_image", "inpaint_mask"))


@dataclasses.dataclass(frozen=True)
class Edit:
    """An edit fitted to its stage: images float32 [S,S,3] in [-1,1]; known_mask [S,S,1] (1 = keep)."""

    stage: str
    size: int
    init_image: np.ndarray | None
    strength: float
    inpaint_image: np.ndarray | None
    known_mask: np.ndarray | None
    resample_steps: int
    notes: tuple[str, ...]  # what was done to the user's files (crops, resizes), to print

    @property
    def input_image(self) -> np.ndarray:
        """The image the edit starts from, [S,S,3] (the inpainting canvas when both are given)."""
        return self.inpaint_image if self.inpaint_image is not None else self.init_image

    def options(self) -> dict[str, Any]:
        """generate_stage's editing options (models/imagen.py EDIT_OPTIONS)."""
        options: dict[str, Any] = {}
        if self.init_image is not None:
            options.update(init_image=self.init_image, strength=self.strength)
        if self.inpaint_image is not None:
            options.update(
                known_image=self.inpaint_image, known_mask=self.known_mask, resample_steps=self.resample_steps
            )
        return options


def _square(image: Image.Image, key: str, path: str, size: int, stage: str, resample: int) -> tuple:
    """(the image centre-cropped to a square and resized to size x size, a note saying so or None)."""
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    note = None
    if (width, height) != (size, size):
        crop = f"centre-cropped to {side}x{side} and " if width != height else ""
        note = f"sample.{key}={path!r}: {width}x{height}, {crop}resized to {size}x{size} for stage {stage!r}."
    return (image.resize((size, size), resample) if side != size else image), note


def _open(path: str, key: str) -> Image.Image:
    if not os.path.isfile(path):
        raise EditError(f"sample.{key}={path!r} is not a file; give a PNG or JPEG.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except OSError as err:
        raise EditError(f"sample.{key}={path!r} cannot be read as an image ({err}).") from err


def load_image(path: str, key: str, size: int, stage: str) -> tuple[np.ndarray, str | None]:
    """(a user's image as float32 [size,size,3] in [-1,1], a note on its crop / resize or None)."""
    image, note = _square(_open(path, key).convert("RGB"), key, path, size, stage, Image.BICUBIC)
    return np.asarray(image, np.float32) / 127.5 - 1.0, note


def load_mask(path: str, image_path: str, size: int, stage: str) -> np.ndarray:
    """A black-and-white mask (white = regenerate) of the same size as image_path's image, cropped and resized
    like it (nearest neighbour: it stays binary) -> float32 [size,size,1], 1 = regenerate."""
    image = _open(path, "inpaint_mask")
    reference = _open(image_path, "inpaint_image").size
    if image.size != reference:
        raise EditError(
            f"sample.inpaint_mask={path!r} is {image.size[0]}x{image.size[1]} but sample.inpaint_image="
            f"{image_path!r} is {reference[0]}x{reference[1]}: the mask must match its image pixel for pixel."
        )
    grey = np.asarray(image.convert("L"))
    if image.mode in ("RGBA", "LA") and np.any(np.asarray(image.getchannel("A")) != 255):
        raise EditError(f"sample.inpaint_mask={path!r} has transparent pixels: save it without transparency.")
    stray = int(np.count_nonzero((grey != 0) & (grey != 255)))
    if stray:
        raise EditError(
            f"sample.inpaint_mask={path!r} is not binary: {stray} of its {grey.size} pixels are neither black "
            "(0, keep) nor white (255, regenerate). Save it as a black-and-white PNG (JPEG blurs the edges)."
        )
    fitted, _ = _square(Image.fromarray(grey), "inpaint_mask", path, size, stage, Image.NEAREST)
    return (np.asarray(fitted, np.float32) / 255.0)[..., None]


def _outpaint(image: np.ndarray, regenerate: np.ndarray, borders: Sequence[int], stage: str) -> tuple:
    """(image shrunk into the canvas less the borders, with a grey surround; the mask, borders regenerated)."""
    top, right, bottom, left = (int(b) for b in borders)
    size = image.shape[0]
    inner_h, inner_w = size - top - bottom, size - left - right
    if inner_h < 1 or inner_w < 1:
        raise EditError(
            f"sample.outpaint={tuple(borders)} leaves no room for the image in stage {stage!r}'s {size}x{size} "
            "canvas: the borders (top, right, bottom, left, in its pixels) must leave at least one pixel."
        )
    pixels = Image.fromarray(np.round((image + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
    inner = np.asarray(pixels.resize((inner_w, inner_h), Image.BICUBIC), np.float32) / 127.5 - 1.0
    mask = Image.fromarray((regenerate[..., 0] * 255).astype(np.uint8)).resize(
        (inner_w, inner_h), Image.NEAREST
    )
    canvas = np.zeros_like(image)
    canvas[top : top + inner_h, left : left + inner_w] = inner
    out_mask = np.ones_like(regenerate)
    out_mask[top : top + inner_h, left : left + inner_w, 0] = np.asarray(mask, np.float32) / 255.0
    return canvas, out_mask


def load_edit(sample: ml_collections.ConfigDict, size: int, stage: str) -> Edit | None:
    """The edit the sample section asks for, fitted to stage `stage` of side `size`; None when it asks for none.
    EditError (one line) for a missing or unreadable file, a mask that does not match or is not binary, or
    keys that do not go together."""
    get = lambda key: sample.get(key, EDIT_DEFAULTS[key])
    borders = tuple(get("outpaint"))
    if not edit_requested(sample):
        if any(borders) or int(get("inpaint_resample")) != 1:
            raise EditError("sample.outpaint and sample.inpaint_resample need sample.inpaint_image.")
        return None
    if len(borders) != 4 or any(int(b) < 0 for b in borders):
        raise EditError(
            f"sample.outpaint={borders}: give four pixel counts >= 0, (top, right, bottom, left)."
        )
    notes: list[str] = []
    init = inpaint = known_mask = None
    if get("init_image"):
        init, note = load_image(get("init_image"), "init_image", size, stage)
        notes += [note] if note else []
    if get("inpaint_mask") and not get("inpaint_image"):
        raise EditError("sample.inpaint_mask needs sample.inpaint_image, the image it masks.")
    if get("inpaint_image"):
        if not get("inpaint_mask") and not any(borders):
            raise EditError(
                "sample.inpaint_image needs sample.inpaint_mask (a black-and-white PNG of its size, white = "
                "regenerate) or sample.outpaint (the borders to fill)."
            )
        inpaint, note = load_image(get("inpaint_image"), "inpaint_image", size, stage)
        notes += [note] if note else []
        regenerate = np.zeros((size, size, 1), np.float32)
        if get("inpaint_mask"):
            regenerate = load_mask(get("inpaint_mask"), get("inpaint_image"), size, stage)
        if any(borders):
            inpaint, regenerate = _outpaint(inpaint, regenerate, borders, stage)
        known_mask = 1.0 - regenerate
    elif any(borders) or int(get("inpaint_resample")) != 1:
        raise EditError("sample.outpaint and sample.inpaint_resample need sample.inpaint_image.")
    return Edit(
        stage=stage,
        size=size,
        init_image=init,
        strength=float(get("strength")),
        inpaint_image=inpaint,
        known_mask=known_mask,
        resample_steps=int(get("inpaint_resample")),
        notes=tuple(notes),
    )


def _nearest(image: np.ndarray, size: int) -> np.ndarray:
    """[s,s,C] -> [size,size,C] by pixel repetition or nearest sampling (shown, not computed with)."""
    index = np.arange(size) * image.shape[0] // size
    return image[index][:, index]


def write_edit_grid(
    edit: Edit, results: np.ndarray, prompts: Sequence[str], path: str, per_prompt: int
) -> None:
    """A PNG grid, one row per prompt: the input, the mask (white = regenerated; grey for image-to-image, all of
    it redone at `strength`) and the prompt's per_prompt results [N,S',S',3] (N = len(prompts))."""
    size = results.shape[1]
    image = _nearest(edit.input_image, size)
    if edit.known_mask is not None:
        mask = np.repeat(_nearest(1.0 - edit.known_mask, size), 3, -1) * 2.0 - 1.0
    else:
        mask = np.full((size, size, 3), 2.0 * edit.strength - 1.0, np.float32)
    cells, captions = [], []
    for row in range(0, len(prompts), per_prompt):
        cells += [image, mask] + list(results[row : row + per_prompt])
        captions += ["input", "mask (white: regenerated)"] + list(prompts[row : row + per_prompt])
    write_grid(np.stack(cells), captions, path, columns=per_prompt + 2)
