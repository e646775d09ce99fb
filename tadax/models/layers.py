"""Small building blocks shared by both model families.

Layouts are channels-last throughout: videos are `(B, T, H, W, C)`.
"""

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

# timm's trunc_normal_(std=.02) truncates at +-2 in absolute value, i.e. at
# +-100 standard deviations: in effect a plain normal of std 0.02.
upstream_trunc_normal = nn.initializers.truncated_normal(
    stddev=0.02, lower=-100.0, upper=100.0)
# PyTorch's default for nn.Linear / nn.Conv weights (kaiming_uniform, a=sqrt(5)).
torch_default_kernel = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias init for a layer with `fan_in` inputs: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / (fan_in ** 0.5)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """A linear layer with `nn.Dense`'s parameters (`kernel` `(C_in, features)`, `bias`),
    `(..., C_in) -> (..., features)` in `dtype`.

    The product runs in `dtype`; the bias joins in float32 before the cast to `dtype`, so
    its gradient, a sum of the output gradient over every token of the batch, accumulates
    in float32 (`nn.Dense` adds it in `dtype`: in bfloat16 a sum of ~10^5 terms that nearly
    cancel loses most of its digits; PyTorch's autocast also sums bias gradients in float32).
    """
    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                (((x.ndim - 1,), (0,)), ((), ())))
        return (y.astype(jnp.float32) + bias).astype(self.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation `x * sigmoid(1.702 x)`, elementwise."""
    return x * jax.nn.sigmoid(1.702 * x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax_last_axis(x: jax.Array, dtype: Any) -> jax.Array:
    """Softmax over the last axis of `x` (any shape) computed in `x`'s precision and
    returned in `dtype`, with a gradient that reads only that output:
    `p * (g - sum(g * p))`, in float32.

    `jax.nn.softmax` differentiates through `exp(x - max) / sum` (its custom JVP
    is off by default), so its backward keeps the unnormalised exponentials as
    well as the probabilities; and a cast after it keeps both precisions. Here
    the backward keeps just the `dtype` output, which the attention's second
    product stores anyway: for logits `(N, heads, L, L)`, one to two arrays of
    that size less per layer (TAdaFormer-B/16, float32, 16 frames: 0.32 GiB less
    per clip, XLA's estimate).
    """
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return (e / jnp.sum(e, axis=-1, keepdims=True)).astype(dtype)


def _softmax_fwd(x, dtype):
    p = softmax_last_axis(x, dtype)
    return p, (p, jnp.zeros((), x.dtype))   # a scalar that carries x's dtype to the backward


def _softmax_bwd(dtype, residuals, grad_out):
    p, like = residuals
    p, grad_out = p.astype(jnp.float32), grad_out.astype(jnp.float32)
    grad = p * (grad_out - jnp.sum(grad_out * p, axis=-1, keepdims=True))
    return (grad.astype(like.dtype),)


softmax_last_axis.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, two-pass variance. x `(..., C)` float32 -> float32.

    The gradient is written by hand: autodiff's version re-derives the
    statistics in several separate passes over `x`, which XLA:CPU then fuses
    into (and recomputes in) each consumer.
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _normalised(x: jax.Array, eps: float) -> Tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * rstd, rstd


def _layer_norm_fwd(x, scale, bias, eps):
    xhat, rstd = _normalised(x, eps)
    return xhat * scale + bias, (x, rstd, scale)


def _layer_norm_bwd(eps, residuals, grad_out):
    x, rstd, scale = residuals
    xhat = (x - jnp.mean(x, axis=-1, keepdims=True)) * rstd
    axes = tuple(range(x.ndim - 1))
    grad_xhat = grad_out * scale
    grad_x = rstd * (grad_xhat - jnp.mean(grad_xhat, axis=-1, keepdims=True)
                     - xhat * jnp.mean(grad_xhat * xhat, axis=-1, keepdims=True))
    return grad_x, jnp.sum(grad_out * xhat, axes), jnp.sum(grad_out, axes)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with PyTorch's exact (two-pass) variance.

    Statistics and normalisation run in float32 whatever the input's dtype;
    the output is `dtype` (the compute dtype where a matmul follows, float32
    where the result is the residual stream or the pooled features).
    Parameters `scale` (from `scale_init`) and `bias` (zeros), float32
    `(C,)`, as flax's `nn.LayerNorm` names them. x: `(..., C)` -> `(..., C)`.
    """
    epsilon: float
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return _layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(eps: float, name: str, dtype: Any = jnp.float32) -> LayerNorm:
    """LayerNorm over the last axis with the exact (two-pass) variance PyTorch uses,
    output in `dtype` (see `LayerNorm`)."""
    return LayerNorm(epsilon=eps, dtype=dtype, name=name)


def temporal_avg_pool3(x: jax.Array) -> jax.Array:
    """Average over a 3-frame window along T, zero padded, always divided by 3.

    Matches `nn.AvgPool3d((3, 1, 1), stride=1, padding=(1, 0, 0))` (which
    counts the padding). x: `(B, T, ...)` -> same shape and dtype, summed in float32.
    """
    pad = [(0, 0)] * x.ndim
    pad[1] = (1, 1)
    xp = jnp.pad(x.astype(jnp.float32), pad)
    return ((xp[:, :-2] + xp[:, 1:-1] + xp[:, 2:]) / 3.0).astype(x.dtype)


def resolve_depthwise_impl(impl: str) -> str:
    """Maps 'auto' to the depthwise implementation that is fast on this backend.

    XLA:CPU's grouped convolution is 30-80x slower than a sum of shifted,
    scaled slices for depthwise kernels; GPU and TPU have good kernels.
    """
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "lax"
    if impl not in ("shifted", "lax"):
        raise ValueError(f"depthwise_impl must be 'auto', 'shifted' or 'lax', got {impl!r}")
    return impl


def _shifted_sum(x: jax.Array, kernel: jax.Array, padding: Sequence[int]) -> jax.Array:
    """Per-channel cross-correlation as a sum of kh*kw shifted, scaled slices (one fused loop).

    x `(N, H, W, C)`, kernel `(kh, kw, C)`, padding `(pad_h, pad_w)` -> `(N, H', W', C)`
    in x's dtype. The sum accumulates in float32 (as a convolution unit does): a
    49-tap sum accumulated in bfloat16 would lose several bits.
    """
    kh, kw, _ = kernel.shape
    ph, pw = padding
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h_out = xp.shape[1] - kh + 1
    w_out = xp.shape[2] - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            term = (xp[:, i:i + h_out, j:j + w_out, :].astype(jnp.float32)
                    * kernel[i, j].astype(jnp.float32))
            out = term if out is None else out + term
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: jax.Array, kernel: jax.Array, padding: Tuple[int, int]) -> jax.Array:
    """Depthwise conv, x `(N, H, W, C)`, kernel `(kh, kw, C)` -> `(N, H', W', C)`.

    The gradients are written by hand: left to autodiff, the input gradient
    becomes kh*kw padded copies of the output gradient summed afterwards, and
    the kernel gradient kh*kw separate passes over both tensors, which inside
    a whole model cost 5-10x the forward pass on XLA:CPU.
    """
    return _shifted_sum(x, kernel, padding)


def _depthwise_fwd(x, kernel, padding):
    return _shifted_sum(x, kernel, padding), (x, kernel)


def _depthwise_kernel_grad(xp: jax.Array, grad_out: jax.Array, kh: int, kw: int) -> jax.Array:
    """Kernel gradient of a stride-1 depthwise conv: `sum_{n,h,w} xp[n, h+i, w+j, c] * g[n, h, w, c]`.

    xp: the zero-padded input `(N, H + kh - 1, W + kw - 1, C)`; grad_out `(N, H, W, C)`
    -> `(kh, kw, C)`. One batched matmul over channels and column blocks: the
    output's columns are cut into blocks of kw (zero padded to a whole number);
    within a block, the output gradient shifted down by each kernel row i
    inside the padded height, against the block's window of 2 kw - 1 input
    columns, gives every pair of columns (w, w') of every row i, summed over
    frames and rows; tap (i, j) sums the pairs (w, w + j), a strided slice of
    the flattened pairs, over blocks. Blocks keep the pairs that no tap uses
    to about half (all W x (W + kw - 1) pairs of a row: 8x the work at W = 56).
    The output gradient is made channel-major once, as a buffer of its own:
    fused into its kh shifted copies, XLA:CPU transposed it kh times.
    """
    n, h, w, c = grad_out.shape
    hp = xp.shape[1]
    blocks = -(-w // kw)
    window = 2 * kw - 1
    g = jnp.pad(grad_out, ((0, 0), (0, 0), (0, blocks * kw - w), (0, 0)))
    x = jnp.pad(xp, ((0, 0), (0, 0), (0, blocks * kw + kw - 1 - xp.shape[2]), (0, 0)))
    x_cm = jnp.transpose(x, (3, 1, 0, 2))                                      # (C, Hp, N, Wx)
    x_windows = jnp.stack([x_cm[..., b * kw:b * kw + window] for b in range(blocks)],
                          axis=1).reshape(c, blocks, hp * n, window)
    g_cm = materialise(jnp.transpose(g, (3, 2, 1, 0))).reshape(c, blocks, kw, h, n)
    shifted = jnp.stack([jnp.pad(g_cm, ((0, 0), (0, 0), (0, 0), (i, hp - h - i), (0, 0)))
                         for i in range(kh)], axis=2).reshape(c, blocks, kh * kw, hp * n)
    pairs = jnp.einsum("cbmk,cbkp->cbmp", shifted, x_windows,
                       preferred_element_type=jnp.float32)
    pairs = jnp.sum(pairs.reshape(c, blocks, kh, kw * window), axis=1)
    taps = [jnp.sum(pairs[:, :, j:j + (kw - 1) * (window + 1) + 1:window + 1], axis=-1)
            for j in range(kw)]
    return jnp.transpose(jnp.stack(taps, axis=-1), (1, 2, 0))                # (kh, kw, C)


def _depthwise_bwd(padding, residuals, grad_out):
    x, kernel = residuals
    kh, kw, _ = kernel.shape
    ph, pw = padding
    # The input gradient is the output gradient correlated with the flipped kernel.
    grad_x = _shifted_sum(grad_out, kernel[::-1, ::-1], (kh - 1 - ph, kw - 1 - pw))
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    grad_kernel = _depthwise_kernel_grad(xp, grad_out, kh, kw).astype(kernel.dtype)
    return grad_x.astype(x.dtype), grad_kernel


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depthwise_shifted(x: jax.Array, kernel: jax.Array, padding: Sequence[int]) -> jax.Array:
    """Depthwise conv as a sum of kh*kw shifted slices. x `(N, H, W, C)`, kernel `(kh, kw, 1, C_out)`."""
    multiplier = kernel.shape[3] // x.shape[-1]
    if multiplier > 1:
        x = jnp.repeat(x, multiplier, axis=-1)
    return materialise(_depthwise(x, kernel[:, :, 0, :], tuple(padding)))


def grouped_conv2d(x: jax.Array, kernel: jax.Array, padding: Sequence[int], groups: int,
                   depthwise_impl: str = "auto") -> jax.Array:
    """Stride-1 2D convolution of a batch of frames, PyTorch semantics (cross-correlation).

    Args:
      x: `(N, H, W, C_in)`.
      kernel: `(kh, kw, C_in // groups, C_out)` (HWIO).
      padding: `(pad_h, pad_w)`, symmetric zero padding.
      groups: feature groups; `groups == C_in` is a depthwise conv.
      depthwise_impl: 'auto' | 'shifted' | 'lax' (see `resolve_depthwise_impl`).
    Returns:
      `(N, H', W', C_out)`.
    """
    depthwise = groups == x.shape[-1] and kernel.shape[2] == 1
    if depthwise and resolve_depthwise_impl(depthwise_impl) == "shifted":
        return _depthwise_shifted(x, kernel, padding)
    ph, pw = padding
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


class PatchConv(nn.Module):
    """A 3D convolution whose spatial kernel equals its spatial stride (non-overlapping
    patches), `(B, T, H, W, C) -> (B, T', H // kh, W // kw, features)`, as one matmul.

    The same parameters as `nn.Conv` with `strides=(temporal_stride, kh, kw)`, temporal
    `padding` and no spatial padding (`kernel` `(kt, kh, kw, C, features)`, `bias`), and
    the same result up to summation order; the bias is added in float32 (see `Dense`). Each frame's patches become channels
    (space-to-depth) and the kt frames of each output step are concatenated, so the
    forward and both gradients are plain matmuls: XLA:CPU's strided convolution
    gradients ran 3-10x slower (README, "Where the train step goes").
    """
    features: int
    kernel_size: Tuple[int, int, int]
    temporal_stride: int = 1
    padding: Tuple[int, int] = (0, 0)
    use_bias: bool = True
    kernel_init: Any = upstream_trunc_normal
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kt, kh, kw = self.kernel_size
        b, t, h, w, c = x.shape
        kernel = self.param("kernel", self.kernel_init, (kt, kh, kw, c, self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) \
            if self.use_bias else None
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        ho, wo = h // kh, w // kw
        x = x[:, :, :ho * kh, :wo * kw].reshape(b, t, ho, kh, wo, kw, c)
        x = x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, ho, wo, kh * kw * c)
        x = jnp.pad(x, ((0, 0), self.padding, (0, 0), (0, 0), (0, 0)))
        st = self.temporal_stride
        to = (x.shape[1] - kt) // st + 1
        x = jnp.concatenate([x[:, i:i + st * (to - 1) + 1:st] for i in range(kt)], axis=-1)
        y = x @ kernel.reshape(kt * kh * kw * c, self.features)
        return y if bias is None else (y.astype(jnp.float32) + bias).astype(y.dtype)


def materialise(x: jax.Array) -> jax.Array:
    """Identity that makes `x`, and its gradient, buffers of their own. Any shape.

    Placed on the residual stream before each block of an unrolled stack
    (`scan_layers=False`). Without it XLA:CPU fuses the cheap element-wise
    residual sums (forward) and gradient sums (backward) into every consumer
    and recomputes them there, through all later blocks: time quadratic in
    depth (5x slower TAdaConvNeXtV2-T training). XLA never fuses across a
    conditional, and it drops `optimization_barrier` before fusing, hence a
    conditional whose other branch only runs when `x` already holds a NaN (it
    then returns all NaN). A scanned stack does not need it: the loop carry,
    forward and backward, is already a buffer between blocks. Other backends
    get `x` unchanged: a conditional costs a GPU a predicate read by the host.
    """
    if jax.default_backend() != "cpu":
        return x
    return jax.lax.cond(jnp.isnan(x.reshape(-1)[0]), lambda v: jnp.full_like(v, jnp.nan),
                        lambda v: v, x)


class DropPath(nn.Module):
    """Stochastic depth that drops whole clips: every frame and token of a clip together.

    The input's leading axis is `B * frames_per_clip` (frames of a clip are
    contiguous), so TAdaFormer's per-frame token tensors drop per clip as the
    original's "L(BT)C" mode does. The drop rate is a call argument: a python
    float, a traced scalar (one per layer of a scanned stack), or None (no
    drop path; a python 0.0 is the same). Uses the 'drop_path' rng stream.
    """
    frames_per_clip: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, rate: Optional[Union[float, jax.Array]],
                 train: bool) -> jax.Array:
        if not train or rate is None or (isinstance(rate, (int, float)) and rate == 0.0):
            return x
        keep = 1.0 - rate
        clips = x.shape[0] // self.frames_per_clip
        # A buffer of its own: XLA:CPU would otherwise fuse the random-bit generation into
        # every element-wise consumer and rerun it per element (forward and backward).
        mask = materialise(jax.random.bernoulli(self.make_rng("drop_path"), keep, (clips,))
                           .astype(jnp.float32)) > 0
        mask = jnp.repeat(mask, self.frames_per_clip)
        mask = mask.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with PyTorch's running-statistics rule.

    Train mode normalises with the (biased) batch statistics and moves the
    running estimates `momentum` of the way towards the batch values, the
    variance towards the unbiased estimate, as `torch.nn.BatchNorm3d` does.
    Under `jit` with a sharded batch the statistics are those of the global
    batch. Eval mode uses the running estimates. Statistics and normalisation
    run in float32; the output has x's dtype. x: `(..., C)`.
    """
    eps: float = 1e-5
    momentum: float = 0.1
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        scale = self.param("scale", init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = xf.size // c
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale + bias).astype(x.dtype)
