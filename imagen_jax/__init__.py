"""imagen-jax: Imagen in JAX/Flax, with GAN and VAE baselines judged through the same pipes."""
