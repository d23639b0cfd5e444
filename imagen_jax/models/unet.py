"""Imagen's U-Nets in one module: the base U-Net (App. F.1) and the Efficient U-Net (App. B.1, F.2).

Conditioning: log-SNR embedding + attention-pooled text (+ the augmentation level for SR stages) feed every
res block through FiLM; text tokens join the keys/values of self-attention at `attn_levels` and are attended
to explicitly at `cross_attn_levels`. SR stages also see the (upsampled, noise-augmented) low-res image,
concatenated to x_t as extra input channels.

`efficient=True` (Efficient U-Net, App. B.1 and Figs. A.30-A.32): a full-resolution input convolution, then one
DBlock per level, each of which downsamples (stride 2) BEFORE its res blocks and attention, including the first:
an SR 64 -> 256 network runs its four blocks at 128, 64, 32 and 16. Each UBlock takes its DBlock's output as the
skip connection (scaled by 1/sqrt(2), concatenated; the deepest UBlock continues from the deepest DBlock without
one), runs its res blocks and attention, and upsamples AFTER them; there is no middle block. `efficient=False` (the base U-Net of App. F.1, as in Ho / Nichol-Dhariwal): level 0 runs
at full resolution, the down path resamples AFTER a level's blocks and the up path BEFORE them, a middle block
joins them, and every res block's output is an (unscaled) skip connection. Per-level channel multipliers and
res-block counts express the Efficient U-Net's shift of parameters to low resolutions.

Text conditioning: `attn_levels` concatenate the text tokens into the keys/values of self-attention (the base and
64 -> 256 stages, D.3.1); `cross_attn_levels` attend to the text alone (the 1024 stage, which has no
self-attention).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.activation_sharding import constrain
from imagen_jax.models import layers

SKIP_SCALE = 2**-0.5  # Efficient U-Net skip connections; the base U-Net's are unscaled


class UNet(nn.Module):
    """Denoiser: x_t [B,H,W,C], log_snr [B], text [B,L,Dt], text_mask bool [B,L] -> prediction [B,H,W,C_out].

    Fields:
      dim: channels at full resolution; level i has dim * channel_mult[i] channels.
      num_res_blocks: res blocks per level (one int for all levels, or one per level).
      attn_levels / cross_attn_levels: level indices (0 = the first, highest-resolution level) with self-attention
        over pixels and text tokens / explicit cross-attention to the text. The base U-Net's middle block attends
        as its deepest level does.
      head_dim: channels per attention head.
      cond_dim: width of the conditioning vector and of the projected text tokens.
      out_channels: 3 for RGB.
      lowres_cond: super-resolution stage; __call__ then needs `lowres` (the upsampled low-res image) and
        `aug_log_snr` (the noise-conditioning augmentation level).
      efficient: the Efficient U-Net (DBlocks / UBlocks, see the module docstring); False: the base U-Net.
      dropout: dropout rate inside res blocks (active when train=True).
      remat: rematerialise each res block in the backward pass (trades compute for activation memory).
      dtype: compute dtype (parameters stay float32).
      norm_groups: every GroupNorm's largest group count (layers.norm_group_count). 32 (Nichol-Dhariwal's,
        Imagen's) is InstanceNorm on a 32-channel level, blind to each channel's mean; a small U-Net takes fewer.
      attention_implementation: jax.nn.dot_product_attention's backend for every attention ("xla"; "cudnn" on
        NVIDIA GPUs); logits and softmax are float32 either way (imagen_jax/attention.py).
    """

    dim: int = 32
    channel_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int | Sequence[int] = 2
    attn_levels: Sequence[int] = (2,)
    cross_attn_levels: Sequence[int] = ()
    head_dim: int = 32
    cond_dim: int = 128
    out_channels: int = 3
    lowres_cond: bool = False
    efficient: bool = True
    dropout: float = 0.0
    remat: bool = False
    dtype: str = "float32"
    attention_implementation: str = "xla"
    norm_groups: int = layers.NORM_GROUPS

    def _blocks_per_level(self) -> tuple[int, ...]:
        levels = len(self.channel_mult)
        blocks = self.num_res_blocks
        blocks = (blocks,) * levels if isinstance(blocks, int) else tuple(blocks)
        if len(blocks) != levels:
            raise ValueError(
                f"num_res_blocks has {len(blocks)} entries but channel_mult has {levels} levels."
            )
        for name, chosen in (
            ("attn_levels", self.attn_levels),
            ("cross_attn_levels", self.cross_attn_levels),
        ):
            if any(not 0 <= i < levels for i in chosen):
                raise ValueError(f"{name}={tuple(chosen)} names a level outside 0..{levels - 1}.")
        return blocks

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        log_snr: jax.Array,
        text: jax.Array,
        text_mask: jax.Array,
        drop_text: jax.Array | None = None,
        *,
        lowres: jax.Array | None = None,
        aug_log_snr: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        blocks = self._blocks_per_level()
        halvings = len(blocks) if self.efficient else len(blocks) - 1
        if x.shape[1] % 2**halvings or x.shape[2] % 2**halvings:
            raise ValueError(
                f"Image side {x.shape[1]}x{x.shape[2]} must be divisible by 2**{halvings} for "
                f"{len(blocks)} {'Efficient ' if self.efficient else ''}U-Net levels."
            )
        dtype = self.dtype
        batch = x.shape[0]
        text_mask = text_mask.astype(bool)
        if drop_text is not None:  # classifier-free guidance: a dropped prompt has no tokens at all
            text_mask = text_mask & ~drop_text[:, None]
        has_text = jnp.any(text_mask, axis=1)

        # Conditioning vector: noise level + pooled text (+ augmentation level).
        cond = layers.log_snr_embedding(log_snr, self.cond_dim)
        cond = layers.dense(self.cond_dim, dtype=dtype, name="time_mlp_0")(cond)
        cond = layers.dense(self.cond_dim, dtype=dtype, name="time_mlp_1")(nn.silu(cond))
        text = layers.layer_norm(dtype, name="text_norm")(text.astype(dtype))
        text = layers.dense(self.cond_dim, dtype=dtype, name="text_proj")(text)
        pooled = layers.AttentionPool(
            dtype=dtype, implementation=self.attention_implementation, name="text_pool"
        )(text, text_mask)
        null_pooled = self.param(
            "null_pooled_text",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
            (self.cond_dim,),
        )
        pooled = jnp.where(has_text[:, None], pooled, null_pooled.astype(pooled.dtype))
        cond = cond + layers.dense(self.cond_dim, dtype=dtype, name="pooled_text_mlp")(pooled)
        if self.lowres_cond:
            if lowres is None or aug_log_snr is None:
                raise ValueError(
                    "A super-resolution U-Net (lowres_cond=True) needs `lowres` and `aug_log_snr`."
                )
            if lowres.shape[:3] != x.shape[:3]:
                raise ValueError(
                    f"`lowres` {lowres.shape} must be upsampled to the batch and size of x {x.shape} "
                    "before it is given to the U-Net."
                )
            aug = layers.log_snr_embedding(aug_log_snr, self.cond_dim)
            cond = cond + layers.dense(self.cond_dim, dtype=dtype, name="aug_mlp")(aug)
            x = jnp.concatenate([x, lowres.astype(x.dtype)], axis=-1)
        elif lowres is not None or aug_log_snr is not None:
            raise ValueError("`lowres` / `aug_log_snr` were given to a U-Net built without lowres_cond.")
        cond = cond.astype(dtype)

        res_block = nn.remat(layers.ResBlock, static_argnums=(3,)) if self.remat else layers.ResBlock

        def attend(h: jax.Array, level: int, tag: str) -> jax.Array:
            if level in self.attn_levels:
                h = layers.AttentionBlock(
                    self.head_dim,
                    dtype=dtype,
                    implementation=self.attention_implementation,
                    norm_groups=self.norm_groups,
                    name=f"{tag}_attn",
                )(h, text, text_mask)
            if level in self.cross_attn_levels:
                h = layers.AttentionBlock(
                    self.head_dim,
                    text_only=True,
                    dtype=dtype,
                    implementation=self.attention_implementation,
                    norm_groups=self.norm_groups,
                    name=f"{tag}_cross_attn",
                )(h, text, text_mask)
            return h

        h = layers.conv(self.dim, dtype=dtype, name="conv_in")(x.astype(dtype))
        h = constrain(h, layers.FEATURE_MAP)  # every block's output is constrained the same way (layers.py)
        if self.efficient:
            h = self._efficient_levels(h, cond, blocks, res_block, attend, train)
        else:
            h = self._base_levels(h, cond, blocks, res_block, attend, train)
        h = nn.silu(layers.group_norm(h.shape[-1], dtype, name="norm_out", max_groups=self.norm_groups)(h))
        out = layers.conv(self.out_channels, zero_init=True, dtype=dtype, name="conv_out")(h)
        assert out.shape[0] == batch
        return out.astype(jnp.float32)

    def _efficient_levels(self, h, cond, blocks, res_block, attend, train):
        """The Efficient U-Net's DBlocks and UBlocks: [B,H,W,dim] -> [B,H,W,dim]; level i runs at H / 2^(i+1)."""
        dtype, skips = self.dtype, []
        for level, (mult, count) in enumerate(zip(self.channel_mult, blocks, strict=True)):
            features = self.dim * mult
            h = layers.Downsample(features, dtype=dtype, name=f"down{level}_resample")(h)
            for i in range(count):
                h = res_block(features, self.dropout, dtype, self.norm_groups, name=f"down{level}_block{i}")(
                    h, cond, train
                )
            h = attend(h, level, f"down{level}")
            skips.append(h)
        skips.pop()  # the deepest UBlock continues from the deepest DBlock: no skip there (Fig. A.32)
        for level in reversed(range(len(blocks))):
            features = self.dim * self.channel_mult[level]
            if level < len(blocks) - 1:
                h = constrain(jnp.concatenate([h, skips.pop() * SKIP_SCALE], axis=-1), layers.FEATURE_MAP)
            for i in range(blocks[level]):
                h = res_block(features, self.dropout, dtype, self.norm_groups, name=f"up{level}_block{i}")(
                    h, cond, train
                )
            h = attend(h, level, f"up{level}")
            out = self.dim * self.channel_mult[level - 1] if level > 0 else self.dim
            h = layers.Upsample(out, dtype=dtype, name=f"up{level}_resample")(h)
        return h

    def _base_levels(self, h, cond, blocks, res_block, attend, train):
        """The base U-Net's levels, middle block and per-block skips: [B,H,W,dim] -> [B,H,W,dim * mult[0]];
        level i runs at H / 2^i."""
        dtype, skips, last = self.dtype, [], len(blocks) - 1
        for level, (mult, count) in enumerate(zip(self.channel_mult, blocks, strict=True)):
            features = self.dim * mult
            for i in range(count):
                h = res_block(features, self.dropout, dtype, self.norm_groups, name=f"down{level}_block{i}")(
                    h, cond, train
                )
                skips.append(h)
            h = attend(h, level, f"down{level}")
            if level < last:
                h = layers.Downsample(features, dtype=dtype, name=f"down{level + 1}_resample")(h)
        mid = self.dim * self.channel_mult[-1]
        h = res_block(mid, self.dropout, dtype, self.norm_groups, name="mid_block0")(h, cond, train)
        h = attend(h, last, "mid")
        h = res_block(mid, self.dropout, dtype, self.norm_groups, name="mid_block1")(h, cond, train)
        for level in reversed(range(len(blocks))):
            features = self.dim * self.channel_mult[level]
            if level < last:
                h = layers.Upsample(h.shape[-1], dtype=dtype, name=f"up{level + 1}_resample")(h)
            for i in range(blocks[level]):
                h = constrain(jnp.concatenate([h, skips.pop()], axis=-1), layers.FEATURE_MAP)
                h = res_block(features, self.dropout, dtype, self.norm_groups, name=f"up{level}_block{i}")(
                    h, cond, train
                )
            h = attend(h, level, f"up{level}")
        return h
