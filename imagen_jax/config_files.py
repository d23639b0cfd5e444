"""Config files that build on each other: a config file loads a sibling by path, so that it works from any working
directory (config files are not an installed package)."""

import importlib.util
import os
import types


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config module `<name>.py` in the folder of `config_file` (pass `__file__`), loaded by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"imagen_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
