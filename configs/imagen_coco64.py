"""A 64x64 text-to-image Imagen stage (81M parameters) on COCO captions from a prepared TFDS directory (nothing is
downloaded; prepare it once with `pip install tensorflow && tfds build coco_captions --data_dir=/data/tfds
--file_format=array_record`). shapes_base's model one level deeper and wider, random crops and flips.

python -m imagen_jax.main --config configs/imagen_coco64.py --workdir /tmp/imagen_coco64 \
    --config.data.tfds_data_dir=/data/tfds [--config.text.pretrained_dir=/data/t5-v1_1-base]
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, tiny=False)
    c = sibling(__file__, "shapes_base").get_config(arg)
    c.data.source = "tfds"
    c.data.tfds_name = "coco_captions"
    c.data.crop = "random"
    c.data.random_flip = True
    c.data.worker_count = 4
    c.sample.judge_prompts = 0  # the shapes judge reads shapes captions only
    c.sample.prompts = (
        "a man riding a horse on a beach",
        "a plate of food with broccoli and rice",
        "a red double decker bus on a city street",
        "a cat sleeping on a laptop keyboard",
    )
    if not variant.tiny:
        c.data.image_size = 64
        c.text.vocab_size = 8000  # a tokenizer trained on the COCO captions, when no pretrained T5 is given
        c.text.max_length = 64
        c.model.dim = 128
        c.model.channel_mult = (1, 2, 3, 4)
        c.model.num_res_blocks = (2, 2, 2, 2)
        c.model.attn_levels = (2, 3)
        c.model.cross_attn_levels = (2, 3)
        c.model.head_dim = 64
        c.model.cond_dim = 512
        c.train.steps = 200_000
        c.train.batch_size = 256
        c.train.learning_rate = 1e-4
        c.train.warmup_steps = 10_000
        c.train.ema_decay = 0.9999
        c.train.log_every = 100
        c.train.checkpoint_every = 5000
        c.sample.num_per_prompt = 4
        c.sample.guidance_scale = 5.0
        c.sample.thresholding = "dynamic"
    return c
