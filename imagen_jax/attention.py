"""Multi-head attention through `jax.nn.dot_product_attention`, with float32 logits and softmax.

One function serves the U-Net's self/cross attention, attention pooling (models/layers.py) and the T5 encoder
(text/t5.py), so it lives below both in the import layers. `implementation` picks the kernel: "xla" (any
backend, the default) or "cudnn" (cuDNN's fused flash attention: NVIDIA GPUs, bfloat16/float16 only).
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")


def check_implementation(implementation: str) -> None:
    """ValueError unless `implementation` is one of IMPLEMENTATIONS and can run on the default backend."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention implementation 'cudnn' needs an NVIDIA GPU, but the default JAX backend is "
            f"{jax.default_backend()!r}; use 'xla'"
        )


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_mask: jax.Array,
    implementation: str = "xla",
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """softmax(scale * q.k + bias, over the keys where kv_mask) . v -> [B,Q,H,D] in the inputs' dtype.

    q [B,Q,H,D], k/v [B,K,H,D], kv_mask bool [B,K] (True = attend), bias float32
    [B or 1,H,Q,K] (added to the scaled logits), scale 1/sqrt(D) when None (T5 passes 1.0).

    Logits and softmax are float32 whatever the inputs' dtype, without upcasting q and k here (the API takes
    one dtype for q, k and v, and cuDNN takes only bfloat16/float16): jax's "xla" implementation contracts
    bfloat16/float16 q and k with float32 accumulation and a float32 result (preferred_element_type, the
    BF16_BF16_F32 dot algorithm) and takes the softmax in float32; cuDNN's fused kernel keeps q.k and the
    softmax in float32. The attention weights are then cast to v's dtype for the product with v.
    tests/test_attention.py fails if the logits are ever rounded to bfloat16 again.

    A row whose keys are all masked attends uniformly (the mean of v over all keys), never NaN: masked logits
    become one large finite negative number, equal across the row.
    """
    check_implementation(implementation)
    dtype = jnp.result_type(q, k, v)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    if implementation == "cudnn":
        if dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(
                f"attention implementation 'cudnn' takes bfloat16 or float16 inputs, got {dtype}: "
                "set the model's dtype to bfloat16, or use 'xla'"
            )
        queries = q.shape[1]
        q, k, v, mask, bias = _cudnn_layout(q, k, v, kv_mask, bias)
        out = jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, implementation="cudnn")
        return out[:, :queries]
    mask = kv_mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, implementation="xla")


def _cudnn_layout(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array, bias: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The same attention in the shapes cuDNN accepts: (q, k, v, mask bool [B,1,Q',K'], bias [.,H,Q',K'] | None).

    cuDNN folds the mask into its bias, which must span the full [Q, K] and (when training with a bias) have
    even lengths: odd Q gains a zero query (its output is dropped by the caller), odd K a masked zero key.
    The bias is cast to the inputs' dtype (cuDNN's).
    """
    pad_q, pad_k = q.shape[1] % 2, k.shape[1] % 2
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    kv_mask = jnp.pad(kv_mask.astype(bool), ((0, 0), (0, pad_k)))
    mask = jnp.broadcast_to(kv_mask[:, None, None, :], (q.shape[0], 1, q.shape[1], k.shape[1]))
    if bias is not None:
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad_q), (0, pad_k))).astype(q.dtype)
    return q, k, v, mask, bias
