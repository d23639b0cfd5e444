"""imagen-jax: Imagen (T5-conditioned cascaded diffusion) in JAX/Flax, with GAN and VAE baselines."""

from setuptools import find_packages, setup

setup(
    name="imagen-jax",
    version="0.1.0",
    description="Imagen text-to-image diffusion cascade in JAX/Flax, with GAN and VAE baselines.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["imagen_jax", "imagen_jax.*"]),
    install_requires=[
        # Exact pins for the fast-moving JAX stack: their APIs change between minor releases.
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml-collections==1.1.0",
        "grain==0.2.18",
        "sentencepiece>=0.2.0",
        "safetensors>=0.4",
        "tokenizers>=0.23.1,<0.24",  # CLIP's BPE (evaluation/clip_import.py); the range transformers 5.23 takes
        "tensorflow-datasets>=4.9.10",
        "tensorboardX>=2.6",
        "numpy>=2.0",
        "scipy>=1.13",
        "pillow>=10.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",  # the figures (imagen_jax/evaluation/plots.py), on the Agg backend
        "absl-py>=2.1",
    ],
    extras_require={
        # mode=compile: XLA's TPU compiler, to compile for a named TPU topology on a machine without one. The
        # release that matches jax 0.10.2; about 140 MB. On a TPU VM it is also the TPU runtime.
        "tpu": ["libtpu==0.0.42.*"],
        "test": [
            "pytest>=8.0",
            "pytest-xdist==3.8.0",  # the README's test command runs the test files on 2 workers
            # Reference implementations for parity tests; the CPU build of torch is cached locally.
            "torch==2.13.0",
            "transformers==5.23.0",
            "libtpu==0.0.42.*",  # tests/test_compile.py compiles the tiny quickstart for a v5e:2x2 topology
            "ruff>=0.6",
        ],
    },
)
