"""Vector quantisation for the VQ-VAE variant: nearest-codebook lookup with straight-through gradients, the EMA
codebook update with dead-code restarts, codebook perplexity, and the text-conditioned autoregressive prior over
the code grid (a small causal transformer with cross-attention to the text tokens, as DALL-E's first stage).

The codebook is not learned by gradients: its three arrays (embedding [K,D], cluster_size [K], embed_sum [K,D])
live in the parameter tree under "codebook" (so checkpoints, shardings and the non-finite guard treat them like
any parameter), receive zero gradients (they are only read through stop_gradient), and are overwritten after
every optimizer step by ema_codebook_update (van den Oord et al. 2017, appendix A.1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.models.layers import dense, layer_norm

CODEBOOK = "codebook"  # the parameter subtree updated by EMA instead of by the optimizer


class Codebook(nn.Module):
    """The codebook's arrays as parameters: embedding [K,D], and its EMA statistics cluster_size [K] (starting
    at 1, so an unused code keeps its vector) and embed_sum [K,D] (= embedding * cluster_size)."""

    num_codes: int
    code_dim: int

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        part = lambda init, axes: nn.with_logical_partitioning(init, axes)
        embedding = self.param(
            "embedding", part(nn.initializers.normal(1.0), (None, None)), (self.num_codes, self.code_dim)
        )
        cluster_size = self.param(
            "cluster_size", part(nn.initializers.ones_init(), (None,)), (self.num_codes,)
        )
        embed_sum = self.param(
            "embed_sum",
            part(lambda *_: jnp.asarray(embedding), (None, None)),
            (self.num_codes, self.code_dim),
        )
        return {"embedding": embedding, "cluster_size": cluster_size, "embed_sum": embed_sum}


def quantize(z_e: jax.Array, embedding: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z_q_st, codes, commitment) for encodings z_e [...,D] and a codebook [K,D]: codes int32 [...] are the
    nearest codes (squared Euclidean), z_q_st [...,D] equals the code vectors in the forward pass and passes the
    gradient straight through to z_e, and commitment [...] is ||z_e - sg(e_code)||^2."""
    embedding = jax.lax.stop_gradient(embedding)
    distances = jnp.sum(z_e**2, -1, keepdims=True) - 2.0 * z_e @ embedding.T + jnp.sum(embedding**2, -1)
    codes = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    z_q = embedding[codes]
    commitment = jnp.sum((z_e - z_q) ** 2, -1)
    return z_e + jax.lax.stop_gradient(z_q - z_e), codes, commitment


def ema_codebook_update(
    codebook: dict[str, jax.Array],
    z_e: jax.Array,
    codes: jax.Array,
    decay: float,
    epsilon: float = 1e-5,
) -> dict[str, jax.Array]:
    """The codebook after one EMA step towards the mean of the encodings assigned to each code.

    cluster_size <- decay * cluster_size + (1 - decay) * count; embed_sum <- decay * embed_sum + (1 - decay) *
    sum of assigned z_e; embedding = embed_sum / Laplace-smoothed cluster_size. z_e [...,D], codes int [...].
    """
    num_codes, dim = codebook["embedding"].shape
    flat = jax.lax.stop_gradient(z_e).reshape(-1, dim).astype(jnp.float32)
    one_hot = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32)
    cluster_size = decay * codebook["cluster_size"] + (1.0 - decay) * one_hot.sum(0)
    embed_sum = decay * codebook["embed_sum"] + (1.0 - decay) * one_hot.T @ flat
    total = cluster_size.sum()
    smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total
    return {"embedding": embed_sum / smoothed[:, None], "cluster_size": cluster_size, "embed_sum": embed_sum}


def restart_dead_codes(
    codebook: dict[str, jax.Array], z_e: jax.Array, threshold: float, rng: jax.Array
) -> tuple[dict[str, jax.Array], jax.Array]:
    """(codebook, number restarted): every code whose EMA cluster_size fell below `threshold` is moved onto a
    random encoding of the batch z_e [...,D] (a slightly jittered copy) with cluster_size 1 (Jukebox-style)."""
    num_codes, dim = codebook["embedding"].shape
    flat = jax.lax.stop_gradient(z_e).reshape(-1, dim).astype(jnp.float32)
    pick_rng, noise_rng = jax.random.split(rng)
    picks = flat[jax.random.randint(pick_rng, (num_codes,), 0, flat.shape[0])]
    picks = picks + 0.01 * jnp.std(flat) * jax.random.normal(noise_rng, picks.shape)
    dead = codebook["cluster_size"] < threshold
    embedding = jnp.where(dead[:, None], picks, codebook["embedding"])
    cluster_size = jnp.where(dead, 1.0, codebook["cluster_size"])
    embed_sum = jnp.where(dead[:, None], picks, codebook["embed_sum"])
    restarted = {"embedding": embedding, "cluster_size": cluster_size, "embed_sum": embed_sum}
    return restarted, dead.sum().astype(jnp.float32)


def perplexity(codes: jax.Array, num_codes: int) -> jax.Array:
    """exp(entropy) of the code usage in `codes` (int, any shape): 1 = one code used, num_codes = all uniformly."""
    usage = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32).mean(0)
    return jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-10)))


# The prior over codes ------------------------------------------------------------------------------------------


class _Attention(nn.Module):
    """Multi-head attention: queries x [B,T,C] over keys/values kv [B,S,Dk] where mask [B or 1,T or 1,S] is True."""

    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, kv: jax.Array, mask: jax.Array) -> jax.Array:
        c = x.shape[-1]
        head_dim = c // self.heads
        proj = lambda name: nn.DenseGeneral(
            (self.heads, head_dim),
            use_bias=False,
            name=name,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "heads", "kv")
            ),
        )
        q, k, v = proj("query")(x), proj("key")(kv), proj("value")(kv)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(float(head_dim))
        logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
        return nn.DenseGeneral(
            c,
            axis=(-2, -1),
            name="out",
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv", "embed")),
        )(out)


class CodePrior(nn.Module):
    """p(codes | text) over a raster-ordered code grid: codes int [B,T] -> logits [B,T,K], position t seeing
    codes < t (a BOS token shifts the input) and every unmasked text token (cross-attention; plus a learned null
    token so an all-masked prompt is finite)."""

    num_codes: int
    length: int
    dim: int = 64
    heads: int = 4
    layers: int = 2

    @nn.compact
    def __call__(self, codes: jax.Array, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        b, t = codes.shape
        embed = nn.Embed(
            self.num_codes + 1,  # + BOS
            self.dim,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embed",
        )
        position = self.param(
            "position",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.length, self.dim),
        )
        null = self.param(
            "null_text",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (1, self.dim),
        )
        tokens = jnp.concatenate([jnp.full((b, 1), self.num_codes, codes.dtype), codes[:, :-1]], axis=1)
        x = embed(tokens) + position[None, :t]
        context = dense(self.dim, ("embed", "mlp"), name="text_proj")(layer_norm(name="text_norm")(text))
        context = jnp.concatenate([jnp.broadcast_to(null[None], (b, 1, self.dim)), context], axis=1)
        context_mask = jnp.concatenate([jnp.ones((b, 1), bool), text_mask.astype(bool)], axis=1)[:, None, :]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        for i in range(self.layers):
            h = layer_norm(name=f"norm_a{i}")(x)
            x = x + _Attention(self.heads, name=f"self_attn_{i}")(h, h, causal)
            x = x + _Attention(self.heads, name=f"cross_attn_{i}")(
                layer_norm(name=f"norm_c{i}")(x), context, context_mask
            )
            h = dense(4 * self.dim, ("embed", "mlp"), name=f"mlp_in_{i}")(layer_norm(name=f"norm_m{i}")(x))
            x = x + dense(self.dim, ("mlp", "embed"), zero_init=True, name=f"mlp_out_{i}")(nn.gelu(h))
        return dense(self.num_codes, ("embed", "vocab"), name="logits")(layer_norm(name="final_norm")(x))


def sample_codes(
    logits_fn: Any, batch: int, length: int, num_codes: int, rng: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Codes int32 [batch, length] drawn one position at a time from logits_fn(codes [B,T]) -> [B,T,K]
    (positions >= t of the input are ignored by a causal prior), at `temperature` (0: greedy)."""

    def body(t, codes):
        logits = logits_fn(codes)[:, t].astype(jnp.float32)
        if temperature == 0:
            choice = jnp.argmax(logits, -1)
        else:
            choice = jax.random.categorical(jax.random.fold_in(rng, t), logits / temperature)
        return codes.at[:, t].set(choice.astype(jnp.int32))

    return jax.lax.fori_loop(0, length, body, jnp.zeros((batch, length), jnp.int32))
