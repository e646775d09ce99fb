"""Shapes, initialisation and options of the Flax models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax import convert
from tadax.models import build_model, default_model_config
from tadax.models.layers import DropPath, PatchConv
from tadax.models.repeat import scan_blocks
from tadax.models.tadaformer import TAdaFormerBlock
from tadax.weights.mapping import flatten

TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), rf_head_dim=16,
                     image_size=64, num_frames=4, num_classes=5)


def _init(cfg, seed=0):
    model = build_model(cfg)
    video = jnp.zeros((2, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
    init = jax.jit(lambda k: model.init({"params": k}, video))
    return model, init(jax.random.PRNGKey(seed)), video


@pytest.mark.parametrize("arch,frames,options", [
    ("tadaformer_b16", 16, {}),
    ("tadaformer_l14", 32, dict(scan_layers=True)),
    ("tadaformer_l14", 64, dict(scan_layers=True)),
    ("tadaconvnextv2_base", 16, dict(scan_layers=True, depthwise_impl="lax"))])
def test_zoo_models_shapes(arch, frames, options):
    """The released sizes build and classify at 224 px, in the layouts and depthwise
    convolution an accelerator run uses (scanned: one block traced per group)."""
    cfg = default_model_config(arch, num_frames=frames, num_classes=174, **options)
    model = build_model(cfg)
    video = jax.ShapeDtypeStruct((2, frames, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x), video)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, video)
    assert logits.shape == (2, 174)


def _initial_values(cfg, wanted):
    """{name: initial value} of the parameters whose '/'-joined path (without 'params')
    `wanted` accepts, from the importer's initialisation (only those are compiled)."""
    names = {"/".join(path[1:]): path for path in flatten(convert.init_shapes(cfg))
             if path[0] == "params"}
    skip = [path for name, path in names.items() if not wanted(name)]
    return {"/".join(path[1:]): value
            for path, value in convert.init_variables(cfg, 0, skip=skip).items()
            if path[0] == "params"}


def test_tadaformer_initialisation_matches_the_original():
    params = _initial_values(default_model_config("tadaformer_tiny", num_classes=5),
                             lambda n: "tada_proj" in n or "bn_b" in n or "c_fc" in n)
    assert any("tada_proj" in n for n in params) and any("c_fc" in n for n in params)
    for name, value in params.items():
        if "tada_proj" in name or "bn_b" in name:
            assert not np.any(value), f"{name} must start at zero"
        elif name.endswith("mlp/c_fc/kernel"):
            assert abs(float(np.std(value)) - 0.02) < 0.002, name


def _without_tada_branches(next_fun, args, kwargs, context):
    """Interceptor: every TAdaFormer branch returns zeros, i.e. the model without them."""
    if isinstance(context.module, TAdaFormerBlock) and context.method_name == "_tada":
        return jnp.zeros_like(args[1])
    return next_fun(*args, **kwargs)


@pytest.mark.parametrize("variant", [{}, dict(temp_enhance=True, double_tada=True)])
def test_zero_tada_proj_adds_nothing(variant):
    """With `tada_proj` at zero (as trained models start) the model computes exactly the
    model without its TAdaFormer branches, in eval and train mode, however the rest of
    the branches (routing, BatchNorm, TAdaConv kernels) is set."""
    cfg = default_model_config("tadaformer_tiny", num_classes=5, dropout_rate=0.0, **variant)
    model, variables, _ = _init(cfg)
    rng = np.random.default_rng(0)

    def randomise(path, x):
        name = jax.tree_util.keystr(path)
        noise = rng.normal(0.0, 0.3, x.shape).astype(x.dtype)
        if "tada_proj" in name:
            return x
        return x * np.exp(noise) if name.endswith("['var']") else x + noise

    variables = jax.tree_util.tree_map_with_path(randomise, variables)
    video = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 32, 32, 3))
    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}

    def forward(intercept):
        """(eval logits, train logits), traced with or without the interceptor (one jit each)."""
        def run(v):
            out_train, _ = model.apply(v, video, train=True, mutable=["batch_stats"], rngs=rngs)
            return model.apply(v, video), out_train
        if not intercept:
            return jax.jit(run)(variables)
        with nn.intercept_methods(_without_tada_branches):
            return jax.jit(run)(variables)

    (plain_eval, plain_train), (got_eval, got_train) = forward(True), forward(False)
    assert np.all(np.isfinite(plain_train))
    np.testing.assert_allclose(got_eval, plain_eval, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_train, plain_train, atol=1e-6, rtol=0)
    # The branches do compute something: with a non-zero tada_proj the output moves.
    moved = jax.tree_util.tree_map_with_path(
        lambda path, x: x + rng.normal(0.0, 0.1, x.shape).astype(x.dtype)
        if "tada_proj" in jax.tree_util.keystr(path) else x, variables)
    moved_eval = jax.jit(lambda v: model.apply(v, video))(moved)
    assert float(jnp.abs(moved_eval - plain_eval).max()) > 1e-3


def test_convnext_initialisation_matches_the_original():
    zero = ("dwconv_rf/b/kernel", "dwconv_rf/b_bias/kernel", "norm_avgpool/scale",
            "norm_avgpool/bias")
    params = _initial_values(default_model_config("tadaconvnextv2_tiny", **TINY_CONVNEXT),
                             lambda n: n.endswith(zero + ("gamma", "pwconv1/kernel")))
    assert sum(n.endswith("gamma") for n in params) == sum(TINY_CONVNEXT["depths"])
    for name, value in params.items():
        if name.endswith(zero):
            assert not np.any(value), f"{name} must start at zero"
        if name.endswith("gamma"):
            np.testing.assert_allclose(value, 1e-6)
        if name.endswith("pwconv1/kernel"):
            assert abs(float(np.std(value)) - 0.02) < 0.003, name


def test_drop_path_drops_whole_clips():
    x = jnp.ones((4 * 3, 5, 2))  # 4 clips of 3 frames, frames of a clip contiguous
    rngs = {"drop_path": jax.random.PRNGKey(3)}
    y = DropPath(frames_per_clip=3).apply({}, x, 0.5, True, rngs=rngs)
    per_clip = np.asarray(y).reshape(4, -1)
    for clip in per_clip:
        assert set(np.unique(clip)) <= {0.0, 2.0} and len(np.unique(clip)) == 1
    assert np.array_equal(DropPath(3).apply({}, x, 0.5, False), x)
    # A traced rate (one per layer of a scanned stack) draws the same mask.
    traced = jax.jit(lambda r: DropPath(3).apply({}, x, r, True, rngs=rngs))(0.5)
    np.testing.assert_array_equal(traced, y)


def test_remat_gives_the_same_gradients():
    cfg = default_model_config("tadaformer_tiny", num_classes=5)
    model, variables, _ = _init(cfg)
    video = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 32, 32, 3))
    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}

    def grad(m):
        def loss(params):
            out, _ = m.apply(dict(variables, params=params), video, train=True, rngs=rngs,
                             mutable=["batch_stats"])
            return jnp.mean(out ** 2)
        return jax.jit(jax.grad(loss))(variables["params"])

    base = grad(model)
    rematted = grad(build_model(default_model_config("tadaformer_tiny", num_classes=5,
                                                     remat="full")))
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(rematted)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape,kernel,stride,pad,bias", [
    ((2, 5, 12, 16, 3), (3, 4, 4), 2, (1, 1), True),     # TAdaConvNeXtV2's stem
    ((1, 4, 10, 14, 6), (1, 2, 2), 1, (0, 0), True),     # its downsampling
    ((1, 6, 33, 30, 3), (3, 16, 16), 2, (1, 1), False),  # TAdaFormer's patches; H, W not multiples
    ((2, 7, 9, 8, 5), (2, 3, 2), 3, (0, 2), True)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_patch_conv_is_nn_conv(shape, kernel, stride, pad, bias, dtype):
    """PatchConv has nn.Conv's parameters (names, shapes, initial values) and computes its
    output and every gradient, up to summation order; in bfloat16, float32 nn.Conv's up to
    bfloat16 rounding (a bias gradient summed in bfloat16 is off by more)."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ours = PatchConv(7, kernel, stride, pad, use_bias=bias, bias_init=nn.initializers.normal(1.0),
                     dtype=dtype)
    ref = nn.Conv(7, kernel, strides=(stride, kernel[1], kernel[2]),
                  padding=(pad, (0, 0), (0, 0)), use_bias=bias,
                  kernel_init=ours.kernel_init, bias_init=ours.bias_init, dtype=jnp.float32)
    params = jax.jit(ours.init)(jax.random.PRNGKey(1), x)
    ref_params = jax.jit(ref.init)(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    assert all(np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))

    def loss(module, p, x):
        y = module.apply(p, x)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True),
                             static_argnums=0)
    (_, y), grads = value_and_grad(ours, params, x)
    (_, y_ref), grads_ref = value_and_grad(ref, params, x)
    assert y.shape == y_ref.shape and y.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    for a, b in zip([y] + jax.tree.leaves(grads), [y_ref] + jax.tree.leaves(grads_ref)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max(), rtol=0)


@pytest.mark.parametrize("arch,fields,calls_per_block", [
    ("tadaformer_tiny", dict(depth=5, num_classes=3), 3),
    ("tadaconvnextv2_tiny", dict(depths=(2, 1, 3, 1), dims=(16, 32, 64, 128), rf_head_dim=8,
                                 image_size=64, num_frames=4, num_classes=3), 1)])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_each_block_drops_its_path_at_the_original_rate(arch, fields, calls_per_block,
                                                        scan_layers, monkeypatch):
    """Block i of n (counted over all stages, first to last) gets drop rate
    `torch.linspace(0, rate, n)[i]`, the original's, in both layouts (traced only: the
    rates are python floats of an unrolled stack, the scanned stack's input of
    `scan_blocks`, whose feeding of each block is tests/test_layout.py's). Catches a
    reversed schedule, a stage's slice of the rates off by one, the rates restarting at 0
    in each stage, or float64 linspace values where the original's are float32."""
    import torch

    from tadax.models import convnext, tadaformer

    seen = []
    original_call, original_scan = DropPath.__call__, scan_blocks

    def recording_call(self, x, rate, train):
        if not scan_layers:
            seen.append(rate)
        return original_call(self, x, rate, train)

    def recording_scan(block, x, rates, train):
        seen.extend(r for r in rates for _ in range(calls_per_block))
        return original_scan(block, x, rates, train)

    monkeypatch.setattr(DropPath, "__call__", recording_call)
    for module in (tadaformer, convnext):
        monkeypatch.setattr(module, "scan_blocks", recording_scan)
    cfg = default_model_config(arch, drop_path_rate=0.3, scan_layers=scan_layers, **fields)
    model = build_model(cfg)
    video = jax.ShapeDtypeStruct((2, cfg.num_frames, cfg.image_size, cfg.image_size, 3),
                                 jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), video)
    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}
    seen.clear()
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs=rngs,
                                            mutable=["batch_stats"]), variables, video)
    blocks = cfg.depth if arch.startswith("tadaformer") else sum(cfg.depths)
    want = torch.linspace(0, 0.3, blocks).tolist()
    assert seen == [r for r in want for _ in range(calls_per_block)]
