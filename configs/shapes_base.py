"""The shapes experiments' shared sections: a small text-to-image Imagen (one 32x32 stage) on the built-in shapes data,
CPU-sized. The quickstart until issue 19 (2026-12-03), kept as it was: the baselines (gan_shapes, vae_shapes),
imagen_shapes (the comparison's Imagen), clip_shapes, the cascades and imagen_coco64 start from it, so their
measured recipes stay what they were. configs/quickstart.py is this experiment at 16x16 with the recipe measured for
it.

python -m imagen_jax.main --config configs/shapes_base.py --workdir /tmp/sb
python -m imagen_jax.main --config configs/shapes_base.py:tiny --workdir /tmp/sb_tiny   # seconds, for tests
"""

import ml_collections

from imagen_jax.config_files import parse_arg
from imagen_jax.data import pipeline
from imagen_jax.evaluation import run


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, tiny=False)
    c = ml_collections.ConfigDict()
    c.mode = "train"  # train | sample | eval | describe
    c.seed = 0
    c.family = "imagen"

    c.data = pipeline.data_defaults()  # imagen_jax/data/pipeline.py: DATA_DEFAULTS, the options' meanings
    c.data.source = "shapes"  # shapes (built in) | tfds: a prepared TFDS dataset through the Grain pipeline
    c.data.image_size = 32
    c.data.max_objects = 1  # 1: one object, an absolute position; 2: also two-object scenes with a relation
    c.data.holdout_combinations = True  # reserve (colour, shape) pairs for evaluation only

    c.text = ml_collections.ConfigDict()
    c.text.pretrained_dir = ""  # a local Hugging Face T5 checkpoint directory; empty: the built-in encoder
    c.text.spiece_model = ""  # a SentencePiece model; empty: trained on the captions into <workdir>/text/
    c.text.vocab_size = 64  # for a tokenizer trained on the captions
    c.text.max_length = 16  # tokens, EOS included
    c.text.dtype = "float32"
    c.text.attention_implementation = "xla"  # jax.nn.dot_product_attention's: xla | cudnn (NVIDIA GPUs)
    c.text.init_seed = 0  # the built-in encoder is frozen at a deterministic random init
    c.text.cache_dir = ""  # embeddings precomputed by mode=encode_text; "": <workdir>/text/cache
    c.text.encode_batch_size = 64  # prompts per T5 call when precomputing the cache
    c.text.t5 = ml_collections.ConfigDict()  # the built-in encoder's shape (T5 v1.1 style)
    c.text.t5.d_model = 64
    c.text.t5.d_kv = 16
    c.text.t5.d_ff = 128
    c.text.t5.num_heads = 4
    c.text.t5.num_layers = 2
    c.text.t5.feed_forward_proj = "gated-gelu"

    c.model = ml_collections.ConfigDict()
    c.model.dim = 32
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = (1, 2, 2)
    c.model.attn_levels = (2,)  # levels (0 = full resolution) with self-attention over pixels + text tokens
    c.model.cross_attn_levels = ()  # levels with explicit cross-attention to the text tokens
    c.model.head_dim = 32
    c.model.cond_dim = 128
    c.model.dropout = 0.0
    c.model.remat = False
    # The base U-Net (App. F.1), as the paper's text-to-image base stage: level 0 at full resolution. The
    # Efficient U-Net (efficient=True) halves the resolution of every level and serves super-resolution stages.
    c.model.efficient = False
    c.model.attention_implementation = "xla"  # jax.nn.dot_product_attention's: xla | cudnn (NVIDIA GPUs)
    c.model.dtype = "float32"
    c.model.norm_groups = 32  # GroupNorm's largest group count: 32 (GroupNorm32) is InstanceNorm at dim 32

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine"
    c.diffusion.prediction = "v"  # well-conditioned at all noise levels: few-step samplers work early on
    c.diffusion.loss_weighting = "uniform"  # uniform | min_snr | truncated_min_snr
    c.diffusion.min_snr_gamma = 5.0
    c.diffusion.cond_drop_prob = 0.1  # text dropped this often, for classifier-free guidance
    c.diffusion.offset_noise = 0.0  # std of a per-(image, channel) constant added to the training noise

    c.train = ml_collections.ConfigDict()
    c.train.steps = 500
    c.train.batch_size = 32
    c.train.learning_rate = 1e-3
    c.train.optimizer = "adam"  # adam | adafactor (factored second moments; the imagen family only)
    c.train.warmup_steps = 100
    c.train.lr_schedule = "constant"  # after the warm-up: constant (Imagen's) | cosine | linear, decaying to
    c.train.lr_final_fraction = 0.0  # this fraction of the peak at train.steps (cosine / linear only)
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.99  # 0.99**500 < 1%: the EMA forgets the random init within this short run
    # true: decay min(ema_decay, (1 + t) / (10 + t)), so early samples never lag far behind; off here, as this
    # recipe was measured (the 16x16 quickstart's ablation found it helps there: experiments/benchmarks/README.md)
    c.train.ema_warmup = False
    c.train.log_every = 25
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.keep_every = 0  # also keep every checkpoint whose step is a multiple of this forever; 0 = off
    c.train.grad_accum_steps = 1  # micro-batches per step (gradients averaged); batch_size must divide evenly
    c.train.max_nonfinite_steps = 10  # stop after this many NaN/inf losses or gradients in a row (0 = never)
    c.train.peak_flops_per_device = 0.0  # for model FLOP utilisation; 0 = detect from the device kind

    c.sample = ml_collections.ConfigDict()
    c.sample.prompts = (
        "a large red circle at the top",
        "a small blue square on the left",
        "a large green triangle in the centre",
        "a small yellow circle at the bottom",
        "a large purple square on the right",
        "a small cyan triangle at the top",
        "a large white circle on the left",
        "a small orange square in the centre",
    )
    c.sample.num_per_prompt = 4
    c.sample.sampler = "dpmpp_2m"  # ancestral | ddim | dpmpp_2m | heun
    c.sample.steps = 20
    c.sample.guidance_scale = 3.0
    # (lo, hi): guidance only where lo <= log-SNR <= hi, the conditional prediction (one pass) elsewhere; ():
    # every noise level. The cosine schedule spans log-SNR -20..20; the quickstart skips the noisiest steps.
    c.sample.guidance_interval = ()
    # none | static | dynamic. Dynamic (the paper's, for high guidance) cost this small model ~7 points of
    # held-out judge accuracy at guidance 3 against static clipping (experiments/benchmarks/README.md).
    c.sample.thresholding = "static"
    c.sample.dynamic_threshold_percentile = 99.5  # in percent (0..100), as in the Imagen paper
    c.sample.seed = 0
    c.sample.judge_prompts = 128  # held-out-combination prompts scored by the judge after training
    # Also sample.eta / sample.spacing (how the sampler steps) and editing with mode=sample (init_image +
    # strength, inpaint_image + inpaint_mask, outpaint, inpaint_resample): defaults in imagen_jax/editing.py,
    # added to every imagen config when it is loaded; README "Editing".

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # CPU only: split the host CPU into this many JAX devices for a data-parallel mesh (XLA:CPU uses ~1.3 cores
    # per step); -1: one per core (a divisor of the batch), 0: JAX's default single CPU device.
    c.mesh.cpu_devices = -1

    c.eval = run.default_settings()  # mode=eval: imagen_jax/evaluation/run.py, the settings' meanings
    c.eval.sweep_option = "guidance_scale"  # FID vs alignment for each value (eval/<step>_sweep.png)
    c.eval.sweep_values = (1.0, 3.0, 5.0)

    c.distributed = ml_collections.ConfigDict()  # multi-process runs (parallel.initialize_distributed)
    c.distributed.initialize = "auto"  # auto: when an address is given or a SLURM/TPU/MPI job is detected
    c.distributed.coordinator_address = ""  # host:port of process 0; "": $JAX_COORDINATOR_ADDRESS or cluster
    c.distributed.num_processes = -1  # -1 = $JAX_NUM_PROCESSES or the cluster's (1 when there is none)
    c.distributed.process_id = -1  # -1 = $JAX_PROCESS_ID or the cluster's

    if variant.tiny:  # the same experiment, seconds long, for tests
        c.text.t5.d_model = 32
        c.text.t5.d_ff = 64
        c.text.t5.num_heads = 2
        c.text.t5.num_layers = 1
        c.model.dim = 8
        c.model.channel_mult = (1, 2)
        c.model.num_res_blocks = (1, 1)
        c.model.attn_levels = (1,)
        c.model.cross_attn_levels = (1,)
        c.model.head_dim = 8
        c.model.cond_dim = 32
        c.data.image_size = 16
        c.train.steps = 4
        c.train.batch_size = 8  # divisible by the 8 simulated devices of the tests
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.checkpoint_every = 2
        c.sample.prompts = c.sample.prompts[:2]
        c.sample.num_per_prompt = 2
        c.sample.steps = 3
        c.sample.judge_prompts = 4
        c.eval.num_samples = 16
        c.eval.kid_subsets = 4
        c.eval.kid_subset_size = 8
        c.eval.feature_net.widths = (8, 16)
        c.eval.feature_net.feature_dim = 32
        c.eval.feature_net.steps = 80
        c.eval.feature_net.batch_size = 32
        c.eval.grid_images = 4
        c.eval.sweep_values = (1.0, 3.0)
    return c
