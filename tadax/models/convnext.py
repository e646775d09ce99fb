"""TAdaConvNeXtV2: ConvNeXt whose depthwise convs are temporally adaptive."""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tadax.models.layers import (Dense, DropPath, LayerNorm, PatchConv, layer_norm, materialise,
                                 quick_gelu, upstream_trunc_normal)
from tadax.models.layers import temporal_avg_pool3
from tadax.models.repeat import block_class, drop_path_rates, scan_blocks
from tadax.models.tadaconv import RouteFunc, TAdaConv2dV2


def _patch_conv(features: int, kernel: Tuple[int, int, int], temporal_stride: int,
                temporal_padding: int, dtype, name: str) -> PatchConv:
    return PatchConv(features, kernel, temporal_stride, (temporal_padding, temporal_padding),
                     kernel_init=upstream_trunc_normal, bias_init=nn.initializers.zeros,
                     dtype=dtype, name=name)


def _dense(features: int, dtype, name: str) -> Dense:
    return Dense(features, kernel_init=upstream_trunc_normal,
                    bias_init=nn.initializers.zeros, dtype=dtype, name=name)


class TAdaConvNeXtV2Block(nn.Module):
    """One block, `(B, T, H, W, C) -> (B, T, H, W, C)`.

    Depthwise 7x7 TAdaConv (calibrated by a routing function on the block
    input, starting at the identity), temporal aggregation
    `norm(y) + norm_avgpool(avgpool_t(y))` (the second LayerNorm starts at
    zero), the inverted-bottleneck MLP with QuickGELU, layer scale `gamma`,
    and a residual dropped per clip with the call's `drop_rate` (see `DropPath`).

    The residual stream (the output) is float32 under any compute dtype: a
    block's contribution starts at `layer_scale_init` (1e-6) times the
    branch, which a bfloat16 sum (steps of 2**-7 at 1) would round away.
    """
    dim: int
    rf_ratio: int
    rf_kernels: Tuple[int, int]
    rf_head_dim: int
    layer_scale_init: float
    tadaconv_impl: str
    depthwise_impl: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate, train: bool) -> jax.Array:
        alpha = RouteFunc(self.dim, self.rf_ratio, tuple(self.rf_kernels), self.rf_head_dim,
                          with_bias_cal=True, zero_init_cal=True, name="dwconv_rf")(x)
        y = TAdaConv2dV2(self.dim, (7, 7), (3, 3), groups=self.dim, use_bias=True,
                         cal_dim="cout", impl=self.tadaconv_impl,
                         depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                         name="dwconv")(x, train, alpha=alpha)
        norm_avgpool = LayerNorm(1e-6, scale_init=nn.initializers.zeros, dtype=self.dtype,
                                 name="norm_avgpool")
        y = layer_norm(1e-6, "norm", self.dtype)(y) + norm_avgpool(temporal_avg_pool3(y))
        y = quick_gelu(_dense(4 * self.dim, self.dtype, "pwconv1")(y))
        y = _dense(self.dim, self.dtype, "pwconv2")(y)
        if self.layer_scale_init > 0:
            gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init),
                               (self.dim,), jnp.float32)
            y = gamma * y.astype(jnp.float32)
        return x.astype(jnp.float32) + DropPath()(y.astype(jnp.float32), drop_rate, train)


class TAdaConvNeXtV2Backbone(nn.Module):
    """`(B, T, H, W, 3)` video -> `(B, dims[-1])` clip features.

    Stem: 3x4x4 conv with temporal stride 2 and LayerNorm; stages 2-4 start
    with LayerNorm + 1x2x2 strided conv; features are the mean over T, H, W
    followed by LayerNorm. With `pre_pool` it returns (features, the last
    stage's output `(B, T', H', W', dims[-1])`).
    Stage s's blocks are `stages_{s}_{j}`, or with `scan_layers` one scanned
    `stages_{s}` whose variables have a leading axis of size `depths[s]`
    (`tadax/models/repeat.py`); `remat` names the rematerialisation policy of a block.
    """
    depths: Sequence[int]
    dims: Sequence[int]
    rf_head_dim: int
    rf_ratio: int = 2
    rf_kernels: Tuple[int, int] = (3, 3)
    stem_t_kernel: int = 3
    stem_t_stride: int = 2
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6
    tadaconv_impl: str = "fast"
    depthwise_impl: str = "auto"
    remat: str = "none"
    scan_layers: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, train: bool, pre_pool: bool = False) -> Any:
        pad_t = (self.stem_t_kernel - 1) // 2
        x = _patch_conv(self.dims[0], (self.stem_t_kernel, 4, 4), self.stem_t_stride, pad_t,
                        self.dtype, "stem_conv")(video)
        x = layer_norm(1e-6, "stem_norm")(x)
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        block_cls = block_class(TAdaConvNeXtV2Block, self.remat, self.scan_layers)
        start = 0
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if stage > 0:
                x = layer_norm(1e-6, f"downsample_{stage}_norm")(x)
                x = _patch_conv(dim, (1, 2, 2), 1, 0, self.dtype, f"downsample_{stage}_conv")(x)
            fields = (dim, self.rf_ratio, tuple(self.rf_kernels), self.rf_head_dim,
                      self.layer_scale_init, self.tadaconv_impl, self.depthwise_impl)
            stage_rates = rates[start:start + depth]
            start += depth
            if self.scan_layers:
                # A block returns the float32 residual stream; a scan's carry keeps one
                # dtype. Its input is read only through casts, so float32 in is the same.
                x = scan_blocks(block_cls(*fields, dtype=self.dtype, name=f"stages_{stage}"),
                                x.astype(jnp.float32), stage_rates, train)
                continue
            for j in range(depth):
                x = block_cls(*fields, dtype=self.dtype, name=f"stages_{stage}_{j}")(
                    materialise(x), stage_rates[j], train)
        pooled = layer_norm(1e-6, "norm")(jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)))
        return (pooled, x) if pre_pool else pooled
