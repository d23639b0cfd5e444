"""Input-pipeline throughput (images/s) at 64x64 on the shapes TFDS dataset, with and without the text join.

Prepares imagen_jax_shapes at 64px (a bench-sized split, PNG in ArrayRecord) into a temporary data_dir, then
times the Grain pipeline (global shuffle, random square crop, caption-aware flip, batch of 32, one process)
after a warm-up, median over repeats: (a) images and captions only; (b) plus each batch's text embeddings
looked up in the embedding cache that mode=encode_text writes (the quickstart's built-in encoder, every caption
and its flipped form cached). The goal is 10x what the quickstart's training step consumes.

    python experiments/benchmarks/data_pipeline_throughput.py [--examples 4096] [--batches 40] [--repeats 3]
        [--read_threads 2] [--worker_count 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

from configs import quickstart
from imagen_jax.data import pipeline, shapes_tfds
from imagen_jax.data import tfds as tfds_lib
from imagen_jax.text import encoder as text_encoder

RESULTS = os.path.join(os.path.dirname(__file__), "results", "data_pipeline_throughput.json")


def images_per_second(batches, count: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read_threads", type=int, default=2)
    parser.add_argument("--worker_count", type=int, default=0)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="pipeline_bench_")
    config = shapes_tfds.ShapesConfig(
        name="bench64", image_size=64, train_examples=args.examples, holdout_examples=64
    )
    start = time.perf_counter()
    shapes_tfds.prepare(tmp, config)
    prepare_s = time.perf_counter() - start
    source = tfds_lib.open_source("imagen_jax_shapes/bench64", "train", tmp)

    text_config = quickstart.get_config().text
    encoder = text_encoder.build_text_encoder(text_config, tmp, corpus=source.caption_corpus)
    captions = source.caption_corpus()
    captions += [pipeline.swap_left_right(c) for c in captions]
    cache_dir = os.path.join(tmp, "cache")
    text_encoder.encode_captions_to_cache(encoder, captions, cache_dir, 256)
    cached = text_encoder.with_cache(encoder, cache_dir)

    spec = pipeline.PipelineSpec(
        seed=0,
        per_process_batch=args.batch,
        augment=pipeline.Augment(64, "random", random_flip=True),
        worker_count=args.worker_count,
        read_threads=args.read_threads,
    )
    results = {}
    for name, join in (("images_and_captions", None), ("with_cached_text_embeddings", cached.encode)):
        batches = pipeline.GrainBatches(source.records, source.parser, spec, join=join)
        images_per_second(batches, 5, args.batch)  # warm-up: threads, workers, first reads
        rates = [images_per_second(batches, args.batches, args.batch) for _ in range(args.repeats)]
        results[name] = {"images_per_s_median": statistics.median(rates), "images_per_s": rates}
        print(
            f"{name}: {statistics.median(rates):.0f} images/s (runs {', '.join(f'{r:.0f}' for r in rates)})"
        )
    record = {
        "command": "python experiments/benchmarks/data_pipeline_throughput.py "
        f"--examples {args.examples} --batches {args.batches} --repeats {args.repeats} "
        f"--read_threads {args.read_threads} --worker_count {args.worker_count}",
        "image_size": 64,
        "batch": args.batch,
        "examples": args.examples,
        "prepare_s": prepare_s,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    print(f"prepared {args.examples} 64px examples in {prepare_s:.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
