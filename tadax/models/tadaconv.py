"""Temporally-adaptive convolution (TAdaConv V2) and its routing function.

A TAdaConv is a 2D convolution applied frame by frame whose kernel is
calibrated per clip and per frame: `W[b, t] = alpha[b, t] * W_base`, and the
bias `beta[b, t] * bias_base`. `alpha` (and `beta`) come from a small routing
network that looks at the whole clip over time (`RouteFunc`).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tadax.models.layers import (BatchNorm, grouped_conv2d, layer_norm, quick_gelu,
                                 temporal_avg_pool3, upstream_trunc_normal)


def _temporal_conv(features: int, k: int, use_bias: bool, kernel_init, name: str) -> nn.Conv:
    """A float32 convolution along T of a `(B, T, C)` sequence, 'same' zero padding."""
    return nn.Conv(features, kernel_size=(k,), padding=[(k // 2, k // 2)], use_bias=use_bias,
                   kernel_init=kernel_init, bias_init=nn.initializers.zeros, dtype=jnp.float32,
                   name=name)


class RouteFunc(nn.Module):
    """Routing function: calibration factors from the frame descriptors of a clip.

    Global spatial pooling, a temporal conv `C -> C/ratio`, LayerNorm +
    QuickGELU, a residual self-attention over time, and a temporal conv back
    to `C` channels (`RouteFuncwTransformer` in the original).

    Attributes:
      channels: C, the number of calibrated channels (= channels of the input).
      ratio: channel reduction inside the routing function.
      kernels: temporal kernel sizes `(k_a, k_b)` of the two temporal convs.
      head_dim: width of one attention head (heads = (C/ratio) / head_dim).
      with_bias_cal: also produce `beta`, the calibration of the conv's bias.
      zero_init_cal: output convs start at zero and 1 is added, so a fresh
        routing function is the identity calibration.

    The kernel calibration alpha `(B, T, C)` is also sown into the
    'intermediates' collection as `alpha` (kept only when the caller applies
    the model with `mutable=['intermediates']`).

    Everything after the spatial pooling runs in float32 whatever the model's
    compute dtype: it works on `(B, T, C)` frame descriptors, a negligible
    share of the model's FLOPs, and its outputs are factors near 1 whose
    deviations are the adaptive signal (bfloat16 resolves steps of 2**-7 at 1).
    """
    channels: int
    ratio: int
    kernels: Tuple[int, int]
    head_dim: int = 64
    with_bias_cal: bool = False
    zero_init_cal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
        """x: `(B, T, H, W, C)` -> float32 (alpha `(B, T, C)`, beta `(B, T, C)` or None)."""
        hidden = self.channels // self.ratio
        if hidden % self.head_dim:
            raise ValueError(f"routing width {hidden} is not a multiple of head_dim {self.head_dim}")
        y = jnp.mean(x, axis=(2, 3), dtype=jnp.float32)
        y = _temporal_conv(hidden, self.kernels[0], True, upstream_trunc_normal, "a")(y)
        y = quick_gelu(layer_norm(1e-6, "norm")(y))
        y = y + self._attention(layer_norm(1e-6, "norm_transformer")(y))
        out_init = nn.initializers.zeros if self.zero_init_cal else upstream_trunc_normal
        offset = 1.0 if self.zero_init_cal else 0.0
        alpha = _temporal_conv(self.channels, self.kernels[1], False, out_init, "b")(y) + offset
        self.sow("intermediates", "alpha", alpha)
        beta = None
        if self.with_bias_cal:
            beta = _temporal_conv(self.channels, self.kernels[1], False, out_init,
                                  "b_bias")(y) + offset
        return alpha, beta

    def _attention(self, y: jax.Array) -> jax.Array:
        """Multi-head self-attention over T. y: `(B, T, D)` -> `(B, T, D)`.

        Channel order as in the original: the packed projection's channel
        `s*D + d*heads + h` is part s (q, k, v) of head h, dim d (head index
        minor); the output channel is `h*head_dim + d` (head index major).
        The logits are scaled by D**-0.5 (the full width, not the head width).
        Written out rather than through `jax.nn.dot_product_attention`: T is a
        handful of tokens in float32 (a fused kernel such as cuDNN's gains
        nothing there and takes only 16-bit inputs), and the head-minor
        channel split and full-width scale are the original's.
        """
        b, t, width = y.shape
        heads = width // self.head_dim
        qkv = _temporal_conv(3 * width, 1, True, upstream_trunc_normal, "qkv_proj")(y)
        qkv = qkv.reshape(b, t, 3, self.head_dim, heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqdh,bkdh->bhqk", q, k) * (width ** -0.5)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkdh->bqhd", weights, v).reshape(b, t, width)
        return _temporal_conv(width, 1, True, upstream_trunc_normal, "attn_out")(out)


def calibrated_kernel(kernel: jax.Array, alpha: jax.Array, cal_dim: str, groups: int) -> jax.Array:
    """The kernel of one frame, `alpha * W_base`.

    kernel: `(kh, kw, C_in // groups, C_out)`; alpha: `(C_out,)` for
    cal_dim 'cout', `(C_in,)` for 'cin' (input channel `g * C_in/groups + i`
    of group g feeds kernel slice `[..., i, o]` for every output o of group g).
    """
    if cal_dim == "cout":
        return kernel * alpha
    cin_per_group, c_out = kernel.shape[2], kernel.shape[3]
    group_of_out = jnp.arange(c_out) // (c_out // groups)
    in_index = group_of_out[None, :] * cin_per_group + jnp.arange(cin_per_group)[:, None]
    return kernel * alpha[in_index]


class TAdaConv2dV2(nn.Module):
    """Temporally-adaptive 2D convolution, `(B, T, H, W, C_in) -> (B, T, H', W', C_out)`.

    Two interchangeable implementations (`impl`):
      'vmap': the definition. Per (clip, frame) the calibrated kernel
        `alpha[b, t] * W_base` (and bias `beta[b, t] * bias`) is built and a
        per-frame convolution is `jax.vmap`-ed over T and B.
      'fast': exact rewrite. The base convolution runs once over all frames;
        for 'cout' its output is scaled per (b, t, channel), for 'cin' the input
        is scaled before it; then the calibrated bias is added.

    Attributes:
      features: C_out.
      kernel_size, padding: spatial `(kh, kw)` and symmetric `(ph, pw)`.
      groups: feature groups (`groups == C_in` is depthwise).
      use_bias: whether the conv has a bias (calibrated by beta when given).
      cal_dim: 'cout' or 'cin', the calibrated channel dimension.
      internal_rf: own a routing function (on this conv's input) producing alpha
        (TAdaFormer); otherwise alpha is passed in (TAdaConvNeXtV2).
      internal_temp_aggr: return `bn_a(y) + bn_b(avgpool_t(y))` (TAdaFormer).
      rf_ratio, rf_kernels, rf_head_dim: settings of the internal routing function.
      dtype: compute dtype of the convolution and of the output; the
        calibration (`alpha`, `beta`, float32) is applied in float32.
    """
    features: int
    kernel_size: Tuple[int, int]
    padding: Tuple[int, int]
    groups: int = 1
    use_bias: bool = True
    cal_dim: str = "cin"
    internal_rf: bool = False
    internal_temp_aggr: bool = False
    rf_ratio: int = 4
    rf_kernels: Tuple[int, int] = (3, 3)
    rf_head_dim: int = 64
    impl: str = "fast"
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, alpha=None) -> jax.Array:
        """x: `(B, T, H, W, C_in)`; alpha: (alpha, beta) pair of `(B, T, C)` or None."""
        if self.cal_dim not in ("cin", "cout"):
            raise ValueError(f"cal_dim must be 'cin' or 'cout', got {self.cal_dim!r}")
        c_in = x.shape[-1]
        kernel = self.param("kernel", upstream_trunc_normal,
                            (*self.kernel_size, c_in // self.groups, self.features), jnp.float32)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
                if self.use_bias else None)
        if self.internal_rf:
            if alpha is not None:
                raise ValueError("alpha is given but this TAdaConv owns its routing function")
            alpha = RouteFunc(self.features, self.rf_ratio, tuple(self.rf_kernels),
                              self.rf_head_dim, with_bias_cal=self.use_bias,
                              zero_init_cal=False, name="rf_func")(x)
        if alpha is None:
            raise ValueError("TAdaConv2dV2 without an internal routing function needs alpha")
        w_alpha, b_alpha = alpha
        x = x.astype(self.dtype)
        if self.impl == "fast":
            y = self._fast(x, kernel, w_alpha)
        elif self.impl == "vmap":
            y = self._vmapped(x, kernel, w_alpha)
        else:
            raise ValueError(f"impl must be 'fast' or 'vmap', got {self.impl!r}")
        if bias is not None:
            cal_bias = bias
            if b_alpha is not None:
                cal_bias = b_alpha * cal_bias
                cal_bias = cal_bias[:, :, None, None, :]
            y = y + cal_bias
        y = y.astype(self.dtype)
        if self.internal_temp_aggr:
            y = (BatchNorm(name="bn_a")(y, train)
                 + BatchNorm(zero_init=True, name="bn_b")(temporal_avg_pool3(y), train))
        return y

    def _conv_frames(self, frames: jax.Array, kernel: jax.Array) -> jax.Array:
        """`(N, H, W, C_in)` -> `(N, H', W', C_out)` with one shared kernel."""
        return grouped_conv2d(frames, kernel, self.padding, self.groups, self.depthwise_impl)

    def _fast(self, x, kernel, w_alpha):
        b, t = x.shape[:2]
        if self.cal_dim == "cin":
            x = (x * w_alpha[:, :, None, None, :]).astype(self.dtype)
        y = self._conv_frames(x.reshape(b * t, *x.shape[2:]), kernel.astype(self.dtype))
        y = y.reshape(b, t, *y.shape[1:])
        if self.cal_dim == "cout":
            y = y * w_alpha[:, :, None, None, :]
        return y

    def _vmapped(self, x, kernel, w_alpha):
        def one_frame(frame, frame_alpha):
            k = calibrated_kernel(kernel, frame_alpha, self.cal_dim, self.groups).astype(self.dtype)
            return self._conv_frames(frame[None], k)[0]

        return jax.vmap(jax.vmap(one_frame))(x, w_alpha)
