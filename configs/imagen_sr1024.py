"""The paper's sr1024 stage: configs/imagen_cascade.py with train_stage=sr1024 (see there for the commands).

python -m imagen_jax.main --config configs/imagen_sr1024.py --workdir W --config.text.pretrained_dir=T5_XXL_DIR
"""

import importlib.util
import os

import ml_collections


def _sibling(name: str):
    """Another config file of this folder, loaded by path (so it works from any working directory)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"imagen_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return _sibling("imagen_cascade").get_config(arg, train_stage="sr1024")
