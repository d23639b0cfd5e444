"""How much of a shift in its input's per-channel mean a trained U-Net attributes to noise.

A denoiser that knows the data's background colour must read a constant added to every pixel of x_t as noise:
for a per-channel shift s * d of x_t at noise level (alpha, sigma) (the noise's own mean moved by d), the ideal
v-prediction moves its spatial mean by alpha * d, and the predicted clean image x0 = alpha x_t - sigma v does not
move at all. A network blind to its input's mean moves v by nothing, and x0 keeps alpha * sigma * d of the shift:
sampled from noise, its images keep the initial noise's mean as their colour cast (the quickstart's tinted
backgrounds, experiments/benchmarks/README.md). For each --workdir (a trained single-stage v-prediction run), at
each --log_snr, on 64 training images of the run's data with their captions, prints one JSON row per level:
"v_response" (the v mean's move over alpha * d, per RGB channel: 1 ideal, 0 blind) and "x0_kept" (the x0 mean's
move over alpha * sigma * d: 0 ideal, 1 blind).

python experiments/benchmarks/noise_mean_probe.py --workdir /tmp/qs --out results/noise_mean_probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

from imagen_jax import parallel

parallel.skip_absent_tpu_runtime()  # before JAX starts: stay on the CPU where libtpu is installed for compiles

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from imagen_jax import experiment  # noqa: E402
from imagen_jax import workdir as workdir_lib  # noqa: E402

# The direction of the per-channel shift (times --shift), in noise standard deviations.
SHIFT = (1.0, -1.0, 1.0)


def probe(workdir: str, log_snrs: list[float], shift: float, batch: int = 64) -> list[dict]:
    """One row per log-SNR for the run's latest EMA weights."""
    config = workdir_lib.saved_config(workdir)
    if config is None:
        raise SystemExit(f"{workdir} holds no config.json: give the workdir of a trained run.")
    if "stages" in config:
        raise SystemExit(f"{workdir} is a cascade: this probe reads single-stage runs.")
    exp = experiment.build(config, workdir)
    stage = exp.family.train_stage
    if stage.diffusion.prediction != "v":
        raise SystemExit(
            f"{workdir} predicts {stage.diffusion.prediction!r}: this probe reads v-prediction runs."
        )
    params, step = experiment.restore_latest(exp)
    data = exp.dataset.batch(7, batch)
    x0 = jnp.asarray(data["images"])
    embeddings, mask = exp.text_encoder.encode(data["captions"])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    d = shift * jnp.asarray(SHIFT)
    keep_text = jnp.zeros((batch,), bool)

    @jax.jit
    def v_mean(x_t, log_snr):  # [B, 3]: the prediction's spatial mean per image and channel
        v = stage.unet.apply({"params": params}, x_t, log_snr, embeddings, mask, keep_text, train=False)
        return v.mean(axis=(1, 2))

    rows = []
    for level in log_snrs:
        log_snr = jnp.full((batch,), level, jnp.float32)
        alpha, sigma = float(np.sqrt(1 / (1 + np.exp(-level)))), float(np.sqrt(1 / (1 + np.exp(level))))
        x_t = alpha * x0 + sigma * noise
        moved = v_mean(x_t + sigma * d, log_snr) - v_mean(x_t, log_snr)  # [B, 3]
        response = np.asarray((moved / (alpha * d)).mean(axis=0), dtype=np.float64)
        kept = 1.0 - response  # x0 = alpha x_t - sigma v moves by alpha sigma d - sigma moved
        rows.append(
            {
                "workdir": workdir,
                "step": step,
                "norm_groups": stage.unet.norm_groups,
                "offset_noise": stage.diffusion.offset_noise,
                "log_snr": level,
                "shift": shift,
                "v_response": np.round(response, 3).tolist(),
                "x0_kept": np.round(kept, 3).tolist(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
    parser.add_argument("--log_snr", default="-5,-3,-1,0,1,3,5", help="comma-separated noise levels")
    parser.add_argument(
        "--shift", type=float, default=0.25, help="the shift's size per channel, in noise standard deviations"
    )
    parser.add_argument("--out", default="", help="a .jsonl file the rows are appended to")
    args = parser.parse_args()
    levels = [float(v) for v in args.log_snr.split(",")]
    for workdir in args.workdir:
        lines = [json.dumps(row) + "\n" for row in probe(workdir, levels, args.shift)]
        print("".join(lines), end="", flush=True)
        if args.out:  # a workdir's levels together
            with open(args.out, "a", encoding="utf-8") as f:
                f.writelines(lines)


if __name__ == "__main__":
    main()
