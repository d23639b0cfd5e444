"""The family contract (ARCHITECTURE.md); models/registry.py builds a family from a config.

A family is the math of one kind of generative model, as pure functions over parameter trees:
  init(rng, batch) -> params                          logically boxed parameters for a batch's shapes
  ema_of(params) -> the part of params the EMA averages and generate samples with
  generate(params, text_embeddings, text_mask, rng, **options) -> images in [-1, 1]
  check_sample_options(options) -> None               a ValueError for an option generate cannot take
  sampling_summary() -> str                           the default sampling settings, for the console
and its own training math, which the training-step layer (training/steps/) turns into a step: a loss for the
one-network families, the discriminator and generator losses for the GAN. What a family can do beyond that is
declared in its `capabilities`, never discovered: stages (a cascade, sampled by cascade.py), gradient
accumulation, the optimizers it takes, an EMA warm-up, an encoder whose reconstructions are reported after
training.

A batch is a dict: images float32 [B,H,W,3] in [-1,1], text_embeddings float32 [B,L,D], text_mask bool [B,L].
The family is built from the config once, outside any jitted function: it keeps plain, frozen values (its
modules, hyper-parameters and sampling defaults), never the ConfigDict.
"""

import dataclasses
from typing import Any, ClassVar, Protocol

import jax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a family declares it can do beyond the contract's functions.

    staged: a cascade of stages trained one per run (into <workdir>/stages/<name>) and sampled in sequence;
    the family then also has stages, train_stage and generate_stage (see models/imagen.py).
    grad_accum: its step may average gradients over train.grad_accum_steps micro-batches.
    optimizers: the train.optimizer values it trains with.
    ema_warmup: its EMA decay warms up as min(decay, (1 + t) / (10 + t)).
    traced_sample_options: numeric sampling options its generate takes as traced float32 scalars, so that one
    compiled sampler serves all their values (a guidance sweep); the value 1.0 is passed as a Python float, which
    the family may specialise.
    reconstructs: it has an encoder: reconstruct(params, batch, rng) -> (images, bits/dim [B]), reported on
    held-out images after training.
    generates: its generate makes images; a CLIP (models/contrastive.py) does not: it is trained like the others,
    then scores images against captions (embed_images, embed_texts) and is refused by sample and eval.
    """

    staged: bool = False
    grad_accum: bool = True
    optimizers: tuple[str, ...] = ("adam",)
    ema_warmup: bool = False
    traced_sample_options: tuple[str, ...] = ()
    reconstructs: bool = False
    generates: bool = True


class Family(Protocol):
    kind: ClassVar[str]  # the config.family name
    capabilities: ClassVar[Capabilities]

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree: ...

    def ema_of(self, params: PyTree) -> PyTree: ...

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array: ...

    def check_sample_options(self, options: dict[str, Any]) -> None: ...

    def sampling_summary(self) -> str: ...
