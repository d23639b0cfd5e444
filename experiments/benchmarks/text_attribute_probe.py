"""Does the text encoder carry each attribute to captions of unseen colour-shape pairs? A linear probe says.

For a config's text encoder (the built-in frozen T5 of the quickstart by default, or text.pretrained_dir's T5), fits
one ridge-regression probe per attribute (shape, colour, size, position; one-hot targets, closed form
W = (X^T X + lambda I)^-1 X^T Y on standardised features) on the embeddings of training-split captions, and reports
its accuracy on captions of the held-out colour-shape pairs, for two feature sets:

- pooled: the mask-weighted mean of the token embeddings [D] (the U-Net's conditioning vector pools the tokens
  with learned attention instead; a mean is the least a pooling can keep);
- tokens: every token embedding, flattened [L * D], what the U-Net's attention over text tokens sees.

Accuracy near 1 on the held-out captions means the encoder separates the attribute on unseen pairs, so a model that
fails to draw it on held-out prompts (issue 19: the quickstart's shape accuracy) fails in the image network, not in
the text it is given. Seconds on a CPU; writes one JSON object to --out.

python experiments/benchmarks/text_attribute_probe.py --out experiments/benchmarks/results/text_attribute_probe.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def ridge_probe_accuracy(
    train_x, train_y, test_x, test_y, num_classes: int, ridge: float
) -> tuple[float, float]:
    """(train accuracy, test accuracy) of a one-vs-all ridge regression on standardised features.
    train_x [N, F], train_y [N] ints in [0, num_classes)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ np.eye(num_classes)[train_y])
    return float((np.argmax(a @ weights, 1) == train_y).mean()), float(
        (np.argmax(b @ weights, 1) == test_y).mean()
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"), help="file[:variant]")
    parser.add_argument("--train_prompts", type=int, default=512)
    parser.add_argument("--heldout_prompts", type=int, default=256)
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    args = parser.parse_args()

    from imagen_jax import parallel

    parallel.skip_absent_tpu_runtime()  # before JAX starts: stay on the CPU where libtpu is installed for compiles
    from imagen_jax import experiment
    from imagen_jax import workdir as workdir_lib
    from imagen_jax.data import shapes

    config = workdir_lib.load_config_file(args.config)
    if config.data.get("max_objects", 1) != 1:
        raise SystemExit(
            "text_attribute_probe.py reads one-object captions: use a config with data.max_objects=1."
        )
    # the built-in encoder trains its tokenizer into the workdir
    with tempfile.TemporaryDirectory() as workdir:
        exp = experiment.build(config, workdir)
        train = exp.dataset.prompts(args.train_prompts, split="train", seed=1)
        heldout = exp.dataset.prompts(args.heldout_prompts, split="holdout", seed=2)

        def features(prompts):
            emb, mask = exp.text_encoder.encode(prompts)
            emb, mask = np.asarray(emb, np.float64), np.asarray(mask, np.float64)[..., None]
            return {
                "pooled": (emb * mask).sum(1) / mask.sum(1),
                "tokens": (emb * mask).reshape(len(prompts), -1),
            }

        train_x, heldout_x = features(train), features(heldout)
    values = shapes.ATTRIBUTE_VALUES

    def labels(prompts, attribute):
        return np.array(
            [values[attribute].index(getattr(shapes.parse_caption(p).objects[0], attribute)) for p in prompts]
        )

    result = {"config": args.config, "date": datetime.date.today().isoformat(), "ridge": args.ridge}
    result.update(train_prompts=len(train), heldout_prompts=len(heldout), probes={})
    for kind in ("pooled", "tokens"):
        for attribute in values:
            train_acc, heldout_acc = ridge_probe_accuracy(
                train_x[kind],
                labels(train, attribute),
                heldout_x[kind],
                labels(heldout, attribute),
                len(values[attribute]),
                args.ridge,
            )
            result["probes"][f"{kind}/{attribute}"] = {"train": train_acc, "heldout": heldout_acc}
            print(f"{kind:6s} {attribute:8s} train {train_acc:.3f}  held-out pairs {heldout_acc:.3f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
