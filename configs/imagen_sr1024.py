"""The paper's sr1024 stage: configs/imagen_cascade.py with train_stage=sr1024 (see there for the commands).

python -m imagen_jax.main --config configs/imagen_sr1024.py --workdir W --config.text.pretrained_dir=T5_XXL_DIR
"""

import ml_collections

from imagen_jax.config_files import sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sibling(__file__, "imagen_cascade").get_config(arg, train_stage="sr1024")
