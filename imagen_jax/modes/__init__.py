"""One module per mode of `python -m imagen_jax.main` (config.mode); main.py maps each mode name to its run()."""
