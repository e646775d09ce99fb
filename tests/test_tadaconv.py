"""The two TAdaConv implementations and the two depthwise-conv implementations agree."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax.models.layers import grouped_conv2d, materialise, temporal_avg_pool3
from tadax.models.tadaconv import RouteFunc, TAdaConv2dV2

# (c_in, c_out, groups, kernel, padding)
SHAPES = [(8, 8, 8, (3, 3), (1, 1)), (6, 12, 3, (3, 3), (1, 1)), (4, 8, 1, (1, 1), (0, 0)),
          (6, 6, 6, (7, 7), (3, 3)), (4, 4, 2, (3, 5), (1, 2)), (5, 10, 5, (3, 3), (0, 0))]


def _reference_tadaconv(x, kernel, bias, alpha, beta, cal_dim, groups, padding):
    """Direct numpy definition: per (b, t), conv with the calibrated kernel."""
    b, t, h, w, c_in = x.shape
    kh, kw, cin_g, c_out = kernel.shape
    cout_g = c_out // groups
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    out = np.zeros((b, t, ho, wo, c_out))
    for bi, ti, o in itertools.product(range(b), range(t), range(c_out)):
        g = o // cout_g
        k = kernel[:, :, :, o].astype(np.float64)
        ins = slice(g * cin_g, (g + 1) * cin_g)
        k = k * (alpha[bi, ti, o] if cal_dim == "cout" else alpha[bi, ti, ins])
        acc = np.zeros((ho, wo))
        for i, j in itertools.product(range(kh), range(kw)):
            acc += np.einsum("hwc,c->hw", xp[bi, ti, i:i + ho, j:j + wo, ins], k[i, j])
        if bias is not None:
            acc += bias[o] * (beta[bi, ti, o] if beta is not None else 1.0)
        out[bi, ti, :, :, o] = acc
    return out


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("cal_dim", ["cout", "cin"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_and_vmapped_agree_with_the_definition(shape, cal_dim, use_bias):
    c_in, c_out, groups, ksize, padding = shape
    rng = np.random.default_rng(hash((shape, cal_dim, use_bias)) % 2**32)
    b, t, h, w = 2, 3, 6, 5
    x = rng.normal(size=(b, t, h, w, c_in)).astype(np.float32)
    cal_c = c_out if cal_dim == "cout" else c_in
    alpha = rng.normal(1.0, 0.5, size=(b, t, cal_c)).astype(np.float32)
    beta = rng.normal(1.0, 0.5, size=(b, t, c_out)).astype(np.float32) if use_bias else None
    outs = {}
    for impl in ("fast", "vmap"):
        conv = TAdaConv2dV2(c_out, ksize, padding, groups=groups, use_bias=use_bias,
                            cal_dim=cal_dim, impl=impl)
        variables = jax.jit(lambda key, x, conv=conv: conv.init(key, x, False, alpha=(alpha, beta)))(
            jax.random.PRNGKey(0), x)
        params = dict(variables["params"])
        if use_bias:
            params["bias"] = rng.normal(size=(c_out,)).astype(np.float32)
        outs[impl] = (conv, params)
    params = outs["fast"][1]
    results = {impl: np.asarray(jax.jit(
        lambda p, x, conv=conv: conv.apply({"params": p}, x, False, alpha=(alpha, beta)))(params, x))
               for impl, (conv, _) in outs.items()}
    want = _reference_tadaconv(x, np.asarray(params["kernel"]), params.get("bias"),
                               alpha, beta, cal_dim, groups, padding)
    np.testing.assert_allclose(results["fast"], results["vmap"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results["fast"], want, atol=1e-4, rtol=1e-4)


def test_implementations_agree_inside_a_trained_model_with_gradients():
    """Internal routing + temporal aggregation: values and gradients of both paths."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 5, 5, 16))
    convs = {impl: TAdaConv2dV2(16, (3, 3), (1, 1), groups=16, cal_dim="cout", internal_rf=True,
                                internal_temp_aggr=True, rf_ratio=2, rf_head_dim=4, impl=impl)
             for impl in ("fast", "vmap")}
    variables = jax.jit(convs["fast"].init, static_argnums=2)(jax.random.PRNGKey(0), x, False)

    def loss(params, impl):
        y, _ = convs[impl].apply(dict(variables, params=params), x, True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    values = {impl: jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables["params"], impl)
              for impl in convs}
    np.testing.assert_allclose(values["fast"][0], values["vmap"][0], rtol=1e-5)
    for g_fast, g_vmap in zip(jax.tree_util.tree_leaves(values["fast"][1]),
                              jax.tree_util.tree_leaves(values["vmap"][1])):
        np.testing.assert_allclose(g_fast, g_vmap, atol=1e-4, rtol=1e-4)


def _randomised(variables, seed):
    """Every parameter and statistic moved off its initial value (no identity calibration)."""
    rng = np.random.default_rng(seed)

    def move(path, x):
        noise = rng.normal(0.0, 0.2, x.shape).astype(x.dtype)
        return x * np.exp(noise) if jax.tree_util.keystr(path).endswith("['var']") else x + noise

    return jax.tree_util.tree_map_with_path(move, variables)


@pytest.mark.parametrize("where,shape,ksize,internal", [
    ("ConvNeXt-T stage 1: 7x7 depthwise, external calibration", (2, 8, 56, 56, 96), 7, False),
    ("TAdaFormer-B/16 branch: 3x3 depthwise, own routing", (2, 8, 14, 14, 384), 3, True)])
def test_fast_and_vmapped_agree_at_model_widths(where, shape, ksize, internal):
    """Both implementations at the widths and grids of the released models, one jitted eval each."""
    c = shape[-1]
    x = jax.random.normal(jax.random.PRNGKey(7), shape)
    rng = np.random.default_rng(c)
    alpha = None if internal else (
        jnp.asarray(rng.normal(1.0, 0.5, shape[:2] + (c,)), jnp.float32),
        jnp.asarray(rng.normal(1.0, 0.5, shape[:2] + (c,)), jnp.float32))
    options = dict(internal_rf=True, internal_temp_aggr=True, rf_ratio=2, rf_head_dim=64) \
        if internal else {}
    convs = {impl: TAdaConv2dV2(c, (ksize, ksize), (ksize // 2, ksize // 2), groups=c,
                                use_bias=True, cal_dim="cout", impl=impl, **options)
             for impl in ("fast", "vmap")}
    init = jax.jit(lambda key, x: convs["fast"].init(key, x, False, alpha=alpha))
    variables = _randomised(init(jax.random.PRNGKey(0), x[:, :, :8, :8]), seed=c)
    out = {impl: np.asarray(jax.jit(lambda v, x: conv.apply(v, x, False, alpha=alpha))(variables, x))
           for impl, conv in convs.items()}
    scale = float(np.abs(out["vmap"]).max())
    assert scale > 1.0
    np.testing.assert_allclose(out["fast"], out["vmap"], atol=1e-5 * scale, rtol=1e-5, err_msg=where)


@pytest.mark.parametrize("kernel,channels,multiplier,pad", [
    (3, 8, 1, (1, 1)), (7, 5, 1, (3, 3)), (3, 4, 2, (1, 1)), (5, 3, 1, (0, 2))])
def test_depthwise_shifted_sum_equals_lax_conv(kernel, channels, multiplier, pad):
    """Values and (hand-written) gradients of the shifted sums equal XLA's grouped conv."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 9, 11, channels))
    k = jax.random.normal(jax.random.PRNGKey(3), (kernel, kernel, 1, channels * multiplier))

    @functools.partial(jax.jit, static_argnums=0)
    def run(impl, x, k):
        return grouped_conv2d(x, k, pad, groups=channels, depthwise_impl=impl)

    np.testing.assert_allclose(run("shifted", x, k), run("lax", x, k), atol=1e-5, rtol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(4), run("lax", x, k).shape)
    grads = {impl: jax.jit(jax.grad(lambda x, k, impl=impl: jnp.vdot(run(impl, x, k), cot),
                                    argnums=(0, 1)))(x, k)
             for impl in ("shifted", "lax")}
    for a, b in zip(grads["shifted"], grads["lax"]):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_materialise_is_the_identity_in_values_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 3, 4))
    f = lambda x: jnp.sum(jnp.sin(materialise(x * 2.0)))  # noqa: E731
    np.testing.assert_array_equal(materialise(x), x)
    np.testing.assert_array_equal(jax.jit(jax.grad(f))(x), 2.0 * jnp.cos(2.0 * x))
    assert bool(jnp.all(jnp.isnan(materialise(x.at[0, 0, 0].set(jnp.nan)))))


def test_temporal_avg_pool_counts_padding():
    x = jnp.arange(1.0, 5.0).reshape(1, 4, 1)
    np.testing.assert_allclose(temporal_avg_pool3(x)[0, :, 0], [1.0, 2.0, 3.0, 7.0 / 3.0])


def _reference_attention(y, qkv_w, qkv_b, out_w, out_b, head_dim):
    """The original's routing attention, spelled out per head in numpy.

    y: (B, T, D); projections as 1x1 temporal convs, i.e. plain matrices (D, 3D), (D, D).
    Packed channel `s*D + d*heads + h` is part s (q, k, v) of head h, dim d; the
    output channel of head h, dim d is `h*head_dim + d`; logits scaled by D**-0.5.
    """
    b, t, width = y.shape
    heads = width // head_dim
    qkv = y @ qkv_w + qkv_b
    out = np.zeros((b, t, width))
    for h in range(heads):
        part = lambda s: qkv[..., [s * width + d * heads + h for d in range(head_dim)]]  # noqa: E731
        q, k, v = part(0), part(1), part(2)
        logits = np.einsum("bqd,bkd->bqk", q, k) * width ** -0.5
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[..., h * head_dim:(h + 1) * head_dim] = np.einsum("bqk,bkd->bqd", weights, v)
    return out @ out_w + out_b


def test_route_func_head_order():
    """The routing attention reads and writes its heads in the original's channel order."""
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 3, 3, 32))
    rf = RouteFunc(32, 2, (3, 3), head_dim=4, with_bias_cal=True, zero_init_cal=False)
    variables = jax.jit(rf.init)(jax.random.PRNGKey(0), x)
    seen = {}

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, RouteFunc) and context.method_name == "_attention":
            seen["in"], seen["out"] = np.asarray(args[0]), np.asarray(out)
        return out

    with nn.intercept_methods(capture):
        rf.apply(variables, x)
    p = variables["params"]
    want = _reference_attention(
        seen["in"].astype(np.float64), np.asarray(p["qkv_proj"]["kernel"][0]),
        np.asarray(p["qkv_proj"]["bias"]), np.asarray(p["attn_out"]["kernel"][0]),
        np.asarray(p["attn_out"]["bias"]), head_dim=4)
    np.testing.assert_allclose(seen["out"], want, atol=1e-5, rtol=1e-5)


def test_route_func_identity_start():
    """A fresh zero-init routing function is the identity calibration."""
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 3, 3, 8))
    rf = RouteFunc(8, 2, (3, 3), head_dim=2, with_bias_cal=True, zero_init_cal=True)
    variables = jax.jit(rf.init)(jax.random.PRNGKey(0), x)
    alpha, beta = jax.jit(rf.apply)(variables, x)
    np.testing.assert_array_equal(alpha, np.ones((2, 6, 8)))
    np.testing.assert_array_equal(beta, np.ones((2, 6, 8)))
    with pytest.raises(ValueError, match="multiple of head_dim"):
        RouteFunc(8, 2, (3, 3), head_dim=3).init(jax.random.PRNGKey(0), x)
