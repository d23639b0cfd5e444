"""A text-conditional VAE baseline (one 32x32 model) on the built-in shapes data, CPU-sized: the same data, text
encoder, training loop, sampling and judge as configs/shapes_base.py, with the VAE family instead of Imagen.

python -m imagen_jax.main --config configs/vae_shapes.py --workdir /tmp/vae
python -m imagen_jax.main --config configs/vae_shapes.py:vq --workdir /tmp/vq          # the VQ-VAE variant
python -m imagen_jax.main --config configs/vae_shapes.py:tiny --workdir /tmp/vae_tiny  # seconds, for tests
python -m imagen_jax.main --config configs/vae_shapes.py:vq,px16 --workdir /tmp/vq16   # the quickstart's 16x16 data
--config.model.variant=vae|vq and --config.model.likelihood=gaussian|logistic choose the model; a variant
argument may combine words, e.g. configs/vae_shapes.py:vq,tiny or :logistic,tiny. px16 is the VAE of the 16x16
comparison (experiments/shapes_comparison): configs/quickstart.py's 16x16 images, the same network (a 4x4 latent
grid).

The decoder is a fixed-variance Gaussian by default: in pilots on this CPU the learned-variance likelihoods
(logistic, or Gaussian with learned variance) spent hundreds of steps widening their scales before moving the
means, and their samples were grey blobs (held-out judge 0.000 at step 450), while the fixed-variance decoder had
coloured, placed shapes by step 300. Its discretised bits/dim cannot go below ~5 (sigma 0.1 over bins of width
2/255); --config.model.likelihood=logistic trains for bits/dim.
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling
from imagen_jax.models.imagen import SAMPLE_OPTIONS

# The variants (flags that combine, e.g. :vq,tiny), shared with configs/vae_coco64.py.
VARIANTS = dict(tiny=False, vq=False, logistic=False, px16=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, **VARIANTS)
    # shapes_base's data, text, train, sample and mesh sections
    c = sibling(__file__, "shapes_base").get_config("tiny" if variant.tiny else None)
    c.family = "vae"
    del c.diffusion

    c.model = ml_collections.ConfigDict()
    c.model.variant = "vq" if variant.vq else "vae"  # vae | vq
    c.model.likelihood = "logistic" if variant.logistic else "gaussian"  # gaussian | logistic (256 bins)
    c.model.gaussian_variance = "fixed"  # fixed (at fixed_sigma) | learned (per pixel); gaussian only
    c.model.fixed_sigma = 0.1
    c.model.dim = 16
    c.model.channel_mult = (1, 2, 4)  # 32 -> 8x8 latent grid
    c.model.num_res_blocks = 1
    c.model.latent_channels = 8  # channels of the latent grid (the code dimension for vq)
    c.model.cond_dim = 128
    c.model.prior_blocks = 2  # FiLM res blocks of the Gaussian prior p(z | text)
    c.model.kl_warmup_steps = 300  # the KL weight grows linearly from 0 to 1 over these steps
    c.model.free_bits = 0.25  # nats per latent channel (batch mean) not penalised: against posterior collapse
    c.model.codebook_size = 128  # vq: codes
    c.model.commitment_cost = 0.25  # vq: beta
    c.model.codebook_decay = 0.99  # vq: EMA decay of the codebook
    c.model.dead_code_threshold = 0.05  # vq: restart codes whose EMA usage count falls below this
    c.model.prior_dim = 64  # vq: the autoregressive code prior (transformer width, heads, layers)
    c.model.prior_heads = 4
    c.model.prior_layers = 2

    c.train.steps = 1400  # ~20 minutes on a shared 2-core CPU
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 100
    c.train.log_every = 50
    c.train.checkpoint_every = 200
    c.train.ema_decay = 0.995

    c.sample.temperature = 1.0  # prior standard deviation scale (vae) / softmax temperature (vq); 0: the mode
    for key in set(SAMPLE_OPTIONS) & set(c.sample):
        del c.sample[key]  # diffusion sampling settings: not used by this family
    c.eval.sweep_option = "temperature"  # mode=eval: FID vs alignment per temperature (not guidance_scale)
    c.eval.sweep_values = (0.5, 0.8, 1.0)

    if variant.px16 and not variant.tiny:  # configs/quickstart.py's data and held-out judging
        quickstart = sibling(__file__, "quickstart").get_config()
        c.data.image_size = quickstart.data.image_size  # 16: channel_mult (1, 2, 4) -> a 4x4 latent grid
        c.sample.judge_prompts = quickstart.sample.judge_prompts
        # Tuned on seed 0 at the comparison's budget (experiments/shapes_comparison/tuning.md), held-out judge:
        # VAE: lr 5e-4 0.961, 1e-3 0.953, 2e-3 0.871; free bits 0.25 -> 1.0 at 1e-3: 0.965.
        # VQ-VAE: lr 1e-3 0.957, 2e-3 0.918; codebook 128 -> 512 at 1e-3: 0.992.
        c.train.learning_rate = 1e-3
        if variant.vq:
            c.model.codebook_size = 512
        else:
            c.model.free_bits = 1.0
    if variant.tiny:
        c.model.dim = 8
        c.model.channel_mult = (1, 2)
        c.model.latent_channels = 4
        c.model.cond_dim = 16
        c.model.prior_blocks = 1
        c.model.kl_warmup_steps = 2
        c.model.codebook_size = 16
        c.model.prior_dim = 16
        c.model.prior_heads = 2
        c.model.prior_layers = 1
        c.train.steps = 4
        c.train.warmup_steps = 2
        c.train.checkpoint_every = 2
        c.train.log_every = 2
        c.train.ema_decay = 0.9
    return c
