"""TAdaFormer: a CLIP ViT whose blocks gain temporally-adaptive branches."""

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import backend as jax_backend

from tadax.errors import ConfigError
from tadax.models.layers import (Dense, DropPath, PatchConv, layer_norm, quick_gelu,
                                 softmax_last_axis, torch_default_kernel,
                                 upstream_trunc_normal)
from tadax.models.repeat import block_class, drop_path_rates, scan_blocks
from tadax.models.tadaconv import TAdaConv2dV2


def _dense(features: int, name: str, dtype, kernel_init=upstream_trunc_normal) -> Dense:
    return Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros,
                    dtype=dtype, name=name)


class TAdaBranch(nn.Module):
    """The temporally-adaptive branch of a block (`TAdaBlock` in the original).

    Projection `W -> W/reduction`, depthwise 3x3 TAdaConv over the patch grid
    of every frame (with its own routing function and temporal aggregation),
    QuickGELU, projection back to W, which starts at zero. With
    `temp_enhance` the first projection is a 3-frame temporal conv and the
    last a 1x1x1 conv (the SSv2 variant).

    x: patch tokens `(B, T, h, w, W)` -> `(B, T, h, w, W)`.
    """
    width: int
    reduction: int
    rf_ratio: int
    rf_kernels: Tuple[int, int]
    rf_head_dim: int
    temp_enhance: bool
    tadaconv_impl: str
    depthwise_impl: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        middle = self.width // self.reduction
        if self.temp_enhance:
            x = PatchConv(middle, (3, 1, 1), padding=(1, 1), kernel_init=upstream_trunc_normal,
                          bias_init=nn.initializers.zeros, dtype=self.dtype,
                          name="tada_pre_proj")(x)
        else:
            x = _dense(middle, "tada_pre_proj", self.dtype)(x)
        x = TAdaConv2dV2(middle, (3, 3), (1, 1), groups=middle, use_bias=True, cal_dim="cout",
                         internal_rf=True, internal_temp_aggr=True, rf_ratio=self.rf_ratio,
                         rf_kernels=self.rf_kernels, rf_head_dim=self.rf_head_dim,
                         impl=self.tadaconv_impl,
                         depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                         name="tadaconv")(x, train)
        x = quick_gelu(x)
        zeros = nn.initializers.zeros
        if self.temp_enhance:
            return PatchConv(self.width, (1, 1, 1), kernel_init=zeros, bias_init=zeros,
                             dtype=self.dtype, name="tada_proj")(x)
        return _dense(self.width, "tada_proj", self.dtype, kernel_init=zeros)(x)


ATTENTION_IMPLS = ("xla", "cudnn")


def check_attention_impl(impl: str, dtype: Any) -> None:
    """Refuses, naming the model config field, an attention implementation that cannot run
    here: an unknown name, or 'cudnn' without a CUDA backend or in float32 (cuDNN's fused
    attention takes 16-bit inputs only)."""
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(f"model.attention_impl={impl!r}: choose one of "
                          f"{', '.join(ATTENTION_IMPLS)}")
    if impl != "cudnn":
        return
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ConfigError(f"model.attention_impl='cudnn' computes in 16 bits; set "
                          f"model.dtype=bfloat16 (it is {jnp.dtype(dtype).name}) or use 'xla'")
    backend = jax_backend.get_backend()
    if backend.platform != "gpu" or "cuda" not in backend.platform_version.lower():
        raise ConfigError(f"model.attention_impl='cudnn' needs an NVIDIA GPU with cuDNN; "
                          f"JAX runs on {backend.platform} here: use model.attention_impl='xla'")


def heads_major_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
    """Softmax attention of packed projections: qkv `(N, L, 3W)` (the q, k and v blocks
    in that order, heads contiguous inside each) -> `(N, L, W)`.

    The heads are moved next to the batch, `(N, heads, L, d)`, before the two
    products, so both are plain batched matmuls and the softmax reduces a
    contiguous last axis; `jax.nn.dot_product_attention`'s `(N, L, heads, d)`
    layout ran 1.4x slower (forward + backward) on XLA:CPU. q, k and v are
    split off the packed last axis before their transposes, so their
    gradients are joined by one concatenation; unpacking a stacked
    `(3, N, heads, L, d)` array instead makes each gradient a zero-padded
    copy of the whole stack, summed (3x the traffic, re-done by each of the
    packed projection's three gradient consumers on XLA:CPU). q is scaled by
    `d ** -0.5` before its product (L x d values rather than L x L logits).
    Logits and softmax in float32, the probabilities cast to v's dtype for
    the second product.
    """
    n, length, packed = qkv.shape
    head_dim = packed // (3 * num_heads)
    q, k, v = (jnp.transpose(part.reshape(n, length, num_heads, head_dim), (0, 2, 1, 3))
               for part in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q * jnp.asarray(head_dim ** -0.5, q.dtype), k,
                        preferred_element_type=jnp.float32)
    probs = softmax_last_axis(logits, v.dtype)
    out = jnp.einsum("nhqk,nhkd->nhqd", probs, v)
    return jnp.transpose(out, (0, 2, 1, 3)).reshape(n, length, num_heads * head_dim)


class SpatialAttention(nn.Module):
    """`nn.MultiheadAttention` over the tokens of each frame, packed q/k/v projection.

    x: `(N, L, W)` -> `(N, L, W)`; parameters `in_proj` `(W, 3W)` (q, k, v
    blocks in that order) and `out_proj`. The attention itself, by
    `attention_impl`: 'xla', XLA's einsums in the heads-major layout of
    `heads_major_attention` (logits and softmax in float32); 'cudnn',
    cuDNN's fused kernel through `jax.nn.dot_product_attention` (16-bit
    inputs, float32 accumulation).
    """
    num_heads: int
    attention_impl: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = Dense(3 * width, kernel_init=nn.initializers.xavier_uniform(),
                       bias_init=nn.initializers.zeros, dtype=self.dtype, name="in_proj")(x)
        if self.attention_impl == "xla":
            out = heads_major_attention(qkv, self.num_heads)
        else:
            q, k, v = jnp.split(qkv.reshape(n, length, 3 * self.num_heads, head_dim), 3, axis=2)
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
        return _dense(width, "out_proj", self.dtype)(out.reshape(n, length, width))


class TAdaFormerBlock(nn.Module):
    """One TAdaFormer layer on the tokens of all frames, `(B*T, 1 + h*w, W)`.

    `x += tada(x)` on the patch tokens (class token untouched), spatial
    attention, optionally a second TAdaBranch (`double_tada`), and the MLP;
    each residual is dropped per clip with the call's `drop_rate` (see `DropPath`). The
    residual stream stays float32 under any compute dtype (`tada_proj` starts at zero,
    and small updates would vanish in a bfloat16 sum); the branches compute
    in `dtype`, their LayerNorms' statistics in float32.
    """
    width: int
    num_heads: int
    num_frames: int
    reduction: int
    rf_ratio: int
    rf_kernels: Tuple[int, int]
    rf_head_dim: int
    temp_enhance: bool
    double_tada: bool
    tadaconv_impl: str
    depthwise_impl: str
    attention_impl: str = "xla"
    dtype: Any = jnp.float32

    def _tada(self, name: str, x: jax.Array, train: bool) -> jax.Array:
        n, length, width = x.shape
        grid = int(round((length - 1) ** 0.5))
        patches = x[:, 1:].reshape(n // self.num_frames, self.num_frames, grid, grid, width)
        out = TAdaBranch(self.width, self.reduction, self.rf_ratio, self.rf_kernels,
                         self.rf_head_dim, self.temp_enhance, self.tadaconv_impl, self.depthwise_impl,
                         dtype=self.dtype, name=name)(patches, train)
        out = out.reshape(n, length - 1, width)
        return jnp.concatenate([jnp.zeros_like(x[:, :1]), out.astype(x.dtype)], axis=1)

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate, train: bool) -> jax.Array:
        drop = DropPath(self.num_frames)
        x = x + drop(self._tada("tada", x, train), drop_rate, train)
        x = x + drop(SpatialAttention(self.num_heads, self.attention_impl, self.dtype, name="attn")(
            layer_norm(1e-5, "ln_1", self.dtype)(x)), drop_rate, train)
        if self.double_tada:
            x = x + drop(self._tada("tada2", x, train), drop_rate, train)
        h = layer_norm(1e-5, "ln_2", self.dtype)(x)
        h = MLP(self.width, self.dtype, name="mlp")(h)
        return x + drop(h, drop_rate, train)


class MLP(nn.Module):
    """CLIP's MLP: `c_fc` (W -> 4W), QuickGELU, `c_proj` (4W -> W). x: `(..., W)`."""
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = quick_gelu(_dense(4 * self.width, "c_fc", self.dtype)(x))
        return _dense(self.width, "c_proj", self.dtype)(x)


class TAdaFormerBackbone(nn.Module):
    """TAdaFormer backbone: `(B, T, H, W, 3)` video -> `(B, W)` clip features.

    A tubelet conv (3 x p x p, temporal stride 2) embeds the video into
    `T/2` token frames; each gets a class token and the shared positional
    embedding, then `ln_pre`, the TAdaFormer layers, and finally the class
    tokens averaged over frames and `ln_post`. With `pre_pool` it returns
    (features, tokens `(B, T/2, 1 + h*w, W)` after the last layer, class token first).
    The layers are `layers_{i}`, or with `scan_layers` one scanned `layers`
    whose variables have a leading axis of size `depth` (`tadax/models/repeat.py`);
    `remat` names the rematerialisation policy of a layer.
    """
    width: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    tubelet_size: int = 3
    tubelet_stride: int = 2
    reduction: int = 2
    rf_ratio: int = 2
    rf_kernels: Tuple[int, int] = (3, 3)
    rf_head_dim: int = 64
    temp_enhance: bool = False
    double_tada: bool = False
    drop_path_rate: float = 0.0
    tadaconv_impl: str = "fast"
    depthwise_impl: str = "auto"
    attention_impl: str = "xla"
    remat: str = "none"
    scan_layers: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, train: bool, pre_pool: bool = False) -> Any:
        p, width = self.patch_size, self.width
        x = PatchConv(width, (self.tubelet_size, p, p), self.tubelet_stride,
                      (self.tubelet_size // 2,) * 2, use_bias=False,
                      kernel_init=torch_default_kernel, dtype=self.dtype, name="conv1")(video)
        b, t, h, w, _ = x.shape
        x = x.reshape(b * t, h * w, width)
        scale = width ** -0.5
        cls = self.param("class_embedding", nn.initializers.normal(scale), (width,), jnp.float32)
        pos = self.param("positional_embedding", nn.initializers.normal(scale),
                         ((self.image_size // p) ** 2 + 1, width), jnp.float32)
        if pos.shape[0] != h * w + 1:
            raise ValueError(f"input of {video.shape[2]}x{video.shape[3]} pixels gives {h}x{w} "
                             f"patches, the positional embedding holds {pos.shape[0] - 1}")
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b * t, 1, width)), x], axis=1)
        x = layer_norm(1e-5, "ln_pre")(x + pos.astype(x.dtype))
        rates = drop_path_rates(self.drop_path_rate, self.depth)
        block_cls = block_class(TAdaFormerBlock, self.remat, self.scan_layers)
        fields = (width, self.num_heads, t, self.reduction, self.rf_ratio, tuple(self.rf_kernels),
                  self.rf_head_dim, self.temp_enhance, self.double_tada, self.tadaconv_impl,
                  self.depthwise_impl, self.attention_impl)
        if self.scan_layers:
            x = scan_blocks(block_cls(*fields, dtype=self.dtype, name="layers"), x, rates, train)
        else:
            for i in range(self.depth):
                x = block_cls(*fields, dtype=self.dtype, name=f"layers_{i}")(x, rates[i], train)
        cls_tokens = x[:, 0].reshape(b, t, width)
        self.sow("intermediates", "frame_class_tokens", cls_tokens)
        pooled = layer_norm(1e-5, "ln_post")(jnp.mean(cls_tokens.astype(jnp.float32), axis=1))
        return (pooled, x.reshape(b, t, h * w + 1, width)) if pre_pool else pooled
