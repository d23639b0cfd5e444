"""Text-encoder throughput (prompts/s): our jitted Flax T5 encoder vs transformers' PyTorch T5EncoderModel.

Random weights (the same for both: ours are loaded from the PyTorch model's save_pretrained), float32,
the same batch and padded length, median over repeats after a warm-up (compilation excluded).

    python experiments/benchmarks/text_encoder_throughput.py [--presets small base] [--batch 32] [--length 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from imagen_jax.text import t5
from imagen_jax.text.hf_import import load_t5


def median_seconds(fns: list[Callable[[], object]], repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time of each fn() over repeats, after warmup calls; interleaved, so load hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def hf_config(config: t5.T5Config) -> transformers.T5Config:
    fields = dataclasses.asdict(config)
    fields.pop("dtype")
    return transformers.T5Config(**fields, dropout_rate=0.0)


def benchmark(name: str, batch: int, length: int, repeats: int, vocab_size: int) -> dict:
    """prompts/s of ours and of transformers for one preset shape."""
    config = t5.preset(name, vocab_size=vocab_size)
    torch.manual_seed(0)
    reference = transformers.T5EncoderModel(hf_config(config)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        module, variables = load_t5(tmp, dtype="float32")

    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab_size, (batch, length)).astype(np.int32)
    lengths = rng.integers(length // 4, length + 1, batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0)

    apply = jax.jit(module.apply)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    ours = lambda: apply(variables, ids_j, mask_j).block_until_ready()
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def theirs():
        with torch.inference_mode():
            return reference(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

    diff = float(np.abs(np.asarray(ours()) - theirs().numpy()).max())
    t_ours, t_theirs = median_seconds([ours, theirs], repeats)
    return {
        "preset": name,
        "batch": batch,
        "length": length,
        "params_M": round(t5.num_params(config) / 1e6, 1),
        "ours_prompts_per_s": round(batch / t_ours, 1),
        "transformers_prompts_per_s": round(batch / t_theirs, 1),
        "speedup": round(t_theirs / t_ours, 2),
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"], choices=sorted(t5.PRESETS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vocab-size", type=int, default=32128)
    args = parser.parse_args()
    print(
        f"# jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, {platform.processor()}"
    )
    for name in args.presets:
        print(json.dumps(benchmark(name, args.batch, args.length, args.repeats, args.vocab_size)))


if __name__ == "__main__":
    main()
