"""Inpainting changes what the judge reads: on a trained single-stage shapes workdir (the quickstart), render
scenes with the shapes data's own renderer, mask the object's region (its pixels, grown by one), inpaint it with
the caption of another colour, and count how often the judge reads the new colour (and, as a control, the old
caption's colour when the same region is inpainted with the old caption).

python experiments/benchmarks/editing_colour_change.py --workdir /tmp/qs22 \
    --out experiments/benchmarks/results/editing_colour_change.json \
    --grid experiments/benchmarks/results/editing_inpaint_grid.png
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import numpy as np

from imagen_jax import experiment
from imagen_jax import workdir as workdir_lib
from imagen_jax.data import shapes
from imagen_jax.evaluation.alignment import judge_scores
from imagen_jax.evaluation.grid import write_grid


def _recolour(caption: str, colour: str) -> str:
    scene = shapes.parse_caption(caption)
    obj = scene.objects[0]
    new = shapes.ObjectSpec(obj.shape, colour, obj.size, obj.position)
    return shapes.caption(shapes.Scene((new,)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained single-stage shapes workdir")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--resample", default="1", help="comma-separated inpaint_resample values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    parser.add_argument("--grid", default="", help="a PNG of input, mask and result for the first 6 scenes")
    args = parser.parse_args()

    config = workdir_lib.saved_config(args.workdir)
    exp = experiment.build(config, args.workdir)
    params, step = experiment.restore_latest(exp, ema=True)
    size = exp.family.train_stage.image_size
    rng = np.random.default_rng(args.seed)
    captions = exp.dataset.prompts(args.prompts, split="train", seed=args.seed)
    images, masks, new_captions = [], [], []
    for caption in captions:
        pixels = shapes.render(shapes.parse_caption(caption), size, rng)
        region = np.any(pixels != np.asarray(shapes.BACKGROUND, np.uint8), axis=-1)
        grown = region.copy()  # one pixel around the object: its soft edge is regenerated too
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        old = shapes.parse_caption(caption).objects[0].colour
        colour = rng.choice([c for c in shapes.COLOURS if c != old])
        images.append(pixels.astype(np.float32) / 127.5 - 1.0)
        masks.append(1.0 - grown[..., None].astype(np.float32))  # 1 = keep
        new_captions.append(_recolour(caption, str(colour)))
    images, masks = np.stack(images), np.stack(masks)
    rows = []
    for resample in [int(r) for r in args.resample.split(",")]:
        generate = jax.jit(functools.partial(exp.family.generate, resample_steps=resample))
        for label, texts in (("new_colour", new_captions), ("same_caption", captions)):
            emb, text_mask = (np.asarray(a) for a in exp.text_encoder.encode(list(texts)))
            start = time.perf_counter()
            out = np.asarray(
                generate(
                    params, emb, text_mask, jax.random.key(args.seed), known_image=images, known_mask=masks
                )
            )
            seconds = time.perf_counter() - start
            scores = judge_scores(out, texts)
            row = dict(
                workdir=args.workdir,
                step=step,
                resample=resample,
                caption=label,
                prompts=len(texts),
                colour=float(np.mean([s["colour"] for s in scores])),
                all=float(np.mean([s["all"] for s in scores])),
                seconds=round(seconds, 1),
                sampling=exp.family.sampling_summary(),
            )
            print(json.dumps(row))
            rows.append(row)
            if args.grid and label == "new_colour" and resample == int(args.resample.split(",")[0]):
                cells, names = [], []
                for i in range(6):
                    cells += [images[i], np.repeat(1.0 - masks[i], 3, -1) * 2 - 1, out[i]]
                    names += [captions[i], "mask (white: regenerated)", new_captions[i]]
                write_grid(np.stack(cells), names, args.grid, columns=3)
    input_scores = judge_scores(images, captions)
    rows.append(dict(caption="inputs", colour=float(np.mean([s["colour"] for s in input_scores]))))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
