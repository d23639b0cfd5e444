"""The paper's base64 stage: configs/imagen_cascade.py with train_stage=base64 (see there for the commands).

python -m imagen_jax.main --config configs/imagen_base64.py --workdir W --config.text.pretrained_dir=T5_XXL_DIR
"""

import ml_collections

from imagen_jax.config_files import sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = sibling(__file__, "imagen_cascade").get_config(arg, train_stage="base64")
    c.train.optimizer = "adafactor"  # as the paper trained its base model (the SR stages keep Adam)
    return c
