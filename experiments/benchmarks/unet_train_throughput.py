"""Training throughput of the ~5M-parameter benchmark U-Net on this CPU: ours (JAX/XLA) vs lucidrains'
imagen-pytorch on the same shape, and how much of the gap is the backend.

Shape (issue 5): 32x32 RGB, batch 16, dim 32, channel multipliers 1,2,4, 2 res blocks per level, attention at
the lowest level, 16 text tokens of width 64. A step is forward + backward + Adam on the diffusion loss. Both U-Nets
are Efficient U-Nets (issue 17): ours with efficient=True, imagen-pytorch's with memory_efficient=True; both
downsample before every level's blocks, the first included, and upsample after every up level. Their parameter
counts differ (imagen-pytorch adds its own extras: an init res block, a final res block, per-level cross-attention
layers), so each row also gives the FLOPs of one step, counted by each framework (XLA's cost analysis of the
compiled step; torch.utils.flop_counter over one step), and the achieved FLOP/s: the FLOP-matched comparison.
Two measurements per framework:
  unet     the whole U-Net train step (ours: imagen_jax.models.unet.UNet; theirs: imagen_pytorch.Unet)
  convnet  the same small conv stack in both (8 x [GroupNorm, SiLU, 3x3 conv 64->64] at 32x32, batch 16):
           identical math, so its ratio is the backend's (XLA:CPU vs PyTorch/oneDNN) share of the gap.

imagen-pytorch must live in its own venv (it pins its own torch), e.g.
    python3 -m venv /tmp/lucid && /tmp/lucid/bin/pip install torch==2.13.0 imagen-pytorch
    /tmp/lucid/bin/pip uninstall -y torchvision   # PyPI's is a CUDA build that fails beside a CPU torch
and is run as a subprocess of this script (it fetches a T5 config at import; that is faked offline here):
    python experiments/benchmarks/unet_train_throughput.py --torch-python /tmp/lucid/bin/python
Prints one JSON line per measurement (median seconds per step) and the ratios; --out writes them to a JSON
file. Run it on an otherwise idle machine: under load the two frameworks lose unequal shares of the CPU.
"""

import argparse
import enum
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import time
import types

BATCH, SIZE, TOKENS, TEXT_WIDTH = 16, 32, 16, 64


def _time(step, warmup: int, repeats: int) -> float:
    """Median seconds per call of step() (which must block until its result is ready) over `repeats` timed
    calls, after `warmup` untimed ones: the median shrugs off a call slowed by another process."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jax_results(warmup: int, repeats: int) -> list[dict]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from imagen_jax.models.unet import UNet

    rng = jax.random.key(0)
    x = jax.random.normal(rng, (BATCH, SIZE, SIZE, 3))
    text = jax.random.normal(rng, (BATCH, TOKENS, TEXT_WIDTH))
    mask = jnp.ones((BATCH, TOKENS), bool)
    results = []

    def measure(name: str, apply, params) -> None:
        opt = optax.adam(1e-4)

        @jax.jit
        def step(params, opt_state, key):
            noise = jax.random.normal(key, x.shape)
            log_snr = jax.random.uniform(key, (BATCH,), minval=-10.0, maxval=10.0)
            loss_fn = lambda p: jnp.mean((apply(p, x + noise, log_snr) - noise) ** 2)
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        state = [params, opt.init(params), 0]

        def run():
            state[0], state[1], loss = step(state[0], state[1], jax.random.fold_in(rng, state[2]))
            state[2] += 1
            loss.block_until_ready()

        seconds = _time(run, warmup, repeats)
        count = sum(p.size for p in jax.tree.leaves(params))
        cost = step.lower(state[0], state[1], rng).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        results.append(_row("jax", name, count, seconds, float(cost["flops"])))

    unet = UNet(
        dim=32,
        channel_mult=(1, 2, 4),
        num_res_blocks=2,
        attn_levels=(2,),
        head_dim=32,
        cond_dim=128,
        efficient=True,
    )
    params = nn.meta.unbox(unet.init(rng, x, jnp.zeros((BATCH,)), text, mask)["params"])
    measure("unet", lambda p, xt, s: unet.apply({"params": p}, xt, s, text, mask), params)

    class ConvNet(nn.Module):
        @nn.compact
        def __call__(self, h):
            h = nn.Conv(64, (3, 3), padding="SAME")(h)
            for _ in range(8):
                h = nn.Conv(64, (3, 3), padding="SAME")(nn.silu(nn.GroupNorm(num_groups=32)(h)))
            return nn.Conv(3, (3, 3), padding="SAME")(h)

    convnet = ConvNet()
    params = convnet.init(rng, x)["params"]
    measure("convnet", lambda p, xt, s: convnet.apply({"params": p}, xt), params)
    return results


def torch_results(warmup: int, repeats: int) -> list[dict]:
    import torch
    import transformers

    # imagen-pytorch reads google/t5-v1_1-base's config from the hub at import; answer offline.
    transformers.T5Config.from_pretrained = classmethod(lambda cls, *a, **k: cls(d_model=768))
    try:
        import torchvision  # noqa: F401
    except (
        ImportError,
        RuntimeError,
    ):  # PyPI's torchvision is a CUDA build: beside a CPU torch, uninstall it
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision")  # the U-Net uses none of it (only the data pipeline does)
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        stub.transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
        # transformers >= 5 imports this name whenever torchvision looks installed
        stub.transforms.InterpolationMode = enum.Enum(
            "InterpolationMode", "NEAREST NEAREST_EXACT BILINEAR BICUBIC BOX HAMMING LANCZOS"
        )
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms})
    from imagen_pytorch import Unet

    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    text = torch.randn(BATCH, TOKENS, TEXT_WIDTH)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    results = []

    def measure(name: str, model, call) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def run():
            noise = torch.randn_like(x)
            times = torch.rand(BATCH)
            loss = torch.mean((call(model, x + noise, times) - noise) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = _time(run, warmup, repeats)
        with FlopCounterMode(display=False) as counter:  # forward + backward (matmuls and convolutions)
            run()
        count = sum(p.numel() for p in model.parameters())
        results.append(_row("torch", name, count, seconds, float(counter.get_total_flops())))

    unet = Unet(
        dim=32,
        dim_mults=(1, 2, 4),
        num_resnet_blocks=2,
        layer_attns=(False, False, True),
        layer_cross_attns=(False, False, True),
        text_embed_dim=TEXT_WIDTH,
        cond_dim=128,
        attn_dim_head=32,
        attn_heads=4,
        max_text_len=TOKENS,
        memory_efficient=True,
    )
    measure("unet", unet, lambda m, xt, t: m(xt, t, text_embeds=text, text_mask=mask, cond_drop_prob=0.1))

    layers = [torch.nn.Conv2d(3, 64, 3, padding=1)]
    for _ in range(8):
        layers += [torch.nn.GroupNorm(32, 64), torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, padding=1)]
    convnet = torch.nn.Sequential(*layers, torch.nn.Conv2d(64, 3, 3, padding=1))
    measure("convnet", convnet, lambda m, xt, t: m(xt))
    return results


def _row(framework: str, model: str, params: int, seconds: float, flops_per_step: float) -> dict:
    return {
        "framework": framework,
        "model": model,
        "params": int(params),
        "seconds_per_step": round(seconds, 5),
        "images_per_sec": round(BATCH / seconds, 2),
        "gflops_per_step": round(flops_per_step / 1e9, 3),
        "achieved_gflops_per_sec": round(flops_per_step / seconds / 1e9, 2),
        "threads": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("jax", "torch", "both"), default="both")
    parser.add_argument(
        "--torch-python", default="/tmp/lucid/bin/python", help="the imagen-pytorch venv's python"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.framework == "torch":
        print(json.dumps(torch_results(args.warmup, args.repeats)))
        return
    rows = jax_results(args.warmup, args.repeats) if args.framework in ("jax", "both") else []
    if args.framework == "both":
        if not os.path.exists(args.torch_python):
            sys.exit(
                f"--torch-python {args.torch_python} does not exist; install imagen-pytorch (see the docstring)."
            )
        command = [args.torch_python, __file__, "--framework=torch", f"--warmup={args.warmup}"]
        done = subprocess.run(command + [f"--repeats={args.repeats}"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the imagen-pytorch run failed:\n{done.stderr[-3000:]}")
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows:
        print(json.dumps(row))
    by = {(r["framework"], r["model"]): r["images_per_sec"] for r in rows}
    rate = {(r["framework"], r["model"]): r["achieved_gflops_per_sec"] for r in rows}
    summary = {}
    for model in ("unet", "convnet"):
        if ("jax", model) in by and ("torch", model) in by:
            summary[f"{model}_jax_over_torch"] = round(by[("jax", model)] / by[("torch", model)], 3)
            summary[f"{model}_flops_per_sec_jax_over_torch"] = round(
                rate[("jax", model)] / rate[("torch", model)], 3
            )
    if (
        "convnet_jax_over_torch" in summary and "unet_jax_over_torch" in summary
    ):  # the part of the U-Net gap that the identical conv stack does not explain is ours
        summary["unet_gap_beyond_backend"] = round(
            summary["unet_jax_over_torch"] / summary["convnet_jax_over_torch"], 3
        )
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
