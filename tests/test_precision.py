"""bfloat16 compute with float32 parameters, and the attention implementation option.

A bfloat16 model's outputs and gradients are compared with the original's float32
results (`$TADAX_FIXTURES`) and may be off by at most twice what the original itself is
off in bfloat16 (torch.autocast) on the same fixture. Bugs this catches: a bias or layer
scale whose gradient sums in bfloat16, a residual added in bfloat16, a routing function
or a normalisation's statistics in bfloat16.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import fixtures_dir, require
from tadax.errors import ConfigError
from tadax.models import build_model, complete_model_config, default_model_config
from tadax.models import tadaformer
from tadax.models.convnext import TAdaConvNeXtV2Block
from tadax.models.layers import softmax_last_axis
from tadax.models.tadaformer import SpatialAttention, TAdaFormerBlock, heads_major_attention
from tadax.train import run_config
from tadax.weights import mapping
from test_cli_errors import assert_one_line_error, run
from test_parity import ENTRIES, IDS, _converted, _with

# bf16 is judged against the original's own bf16 error on the same fixture (its
# `bf16_autocast/*` keys: torch.autocast, float32 parameters): each error of the bf16 model
# against the float32 reference may be at most RATIO times the original's. Floors, for
# errors of the original near zero: the logits, one bf16 rounding step (2**-8 relative) of
# the reference logits' max abs; a gradient tensor, 2**-8 of its max abs. The loss error is
# a single draw of rounding noise (the original's ranges over 1.7e-5..1.3e-3 across the
# fixtures), so its floor is RATIO times the original's largest loss error over all fixtures.
RATIO = 2.0
BF16_STEP = 2.0 ** -8

TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), rf_head_dim=16,
                     image_size=64, num_frames=4, num_classes=5)
# Matmuls and convolutions allowed float32 operands in a bfloat16 model: the routing
# functions (on (B, T, C) frame descriptors), the head, and the logits of XLA's
# attention, whose float32 output makes the backward's dQ and dK products float32.
FLOAT32_ALLOWED = ("rf_func", "dwconv_rf", "/head/", "nhqd,nhkd->nhqk")


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("converted"))


def _grad_errors(ref, grads):
    """Per fixture gradient KEY: max abs error / the float32 reference's max abs, for `grads`
    (tadax's, a flax tree) or, with grads=None, the original's `bf16_autocast/KEY`."""
    flat = mapping.flatten({"params": grads}) if grads is not None else None
    errors = {}
    for key in (k for k in ref.files if k.startswith("grad/")):
        want = ref[key]
        if flat is None:
            got = ref[f"bf16_autocast/{key}"]
        else:
            path = mapping.flax_path(key[len("grad/"):], want.ndim)
            got = np.asarray(flat[path])
            want = mapping.torch_to_flax_array(want, path[-1], got.shape)
        errors[key] = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-8)
    return errors


def _errors(ref, logits_eval, logits_train, loss, grads):
    """The four measures of the fixtures README against the float32 keys of `ref`."""
    grad_errors = _grad_errors(ref, grads)
    return dict(
        logits_eval=float(np.abs(np.asarray(logits_eval) - ref["logits_eval"]).max()),
        logits_train=float(np.abs(np.asarray(logits_train) - ref["logits_train"]).max()),
        loss=abs(float(loss) - float(ref["loss_train"])) / abs(float(ref["loss_train"])),
        grad_median=float(np.median(list(grad_errors.values()))),
        grad_worst=max(grad_errors.values()))


def _original_errors(ref):
    """The original's own bf16 (autocast) errors on fixture `ref`."""
    return _errors(ref, ref["bf16_autocast/logits_eval"], ref["bf16_autocast/logits_train"],
                   ref["bf16_autocast/loss_train"], None)


def _bounds(ref):
    """RATIO times the original's errors on `ref`, with the floors stated above."""
    original = _original_errors(ref)
    logits_floor = BF16_STEP * float(np.abs(ref["logits_eval"]).max())
    largest_loss_error = max(_original_errors(np.load(fixtures_dir() / f"{e['name']}.npz"))["loss"]
                             for e in ENTRIES)
    floors = dict(logits_eval=logits_floor, logits_train=logits_floor, grad_median=BF16_STEP,
                  grad_worst=BF16_STEP, loss=RATIO * largest_loss_error)
    return {k: max(RATIO * v, floors[k]) for k, v in original.items()}


def test_original_bf16_errors_are_those_its_readme_states():
    """The reading of the `bf16_autocast/*` keys (what the bounds are made of) gives the
    fixtures README's table: a wrong key or measure would move the bounds silently."""
    ref = np.load(require(fixtures_dir() / "tadaconvnextv2_tiny_k400.npz", "fixtures"))
    got = _original_errors(ref)
    want = dict(logits_eval=2.01e-2, logits_train=2.01e-2, loss=7.76e-4, grad_median=1.61e-2,
                grad_worst=1.04e-1)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=5e-3), key


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bfloat16_matches_the_float32_original(entry, tmp_root):
    name = entry["name"]
    ref = np.load(fixtures_dir() / f"{name}.npz")
    variables, saved_cfg = _converted(name, tmp_root)
    model = build_model(_with(saved_cfg, dtype="bfloat16", dropout_rate=0.0, drop_path_rate=0.0))
    video = jnp.asarray(ref["video_ncthw"]).transpose(0, 2, 3, 4, 1)
    labels = jnp.asarray(ref["labels"])
    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}

    def run(params):
        def loss_fn(p):
            out, _ = model.apply(dict(variables, params=p), video, train=True, rngs=rngs,
                                 mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean(), out

        (loss, train_logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if "batch_stats" not in variables:    # no BatchNorm, no dropout: eval mode is the same
            return train_logits, train_logits, loss, grads
        return model.apply(dict(variables, params=params), video), train_logits, loss, grads

    logits, train_logits, loss, grads = jax.jit(run)(variables["params"])
    assert logits.dtype == train_logits.dtype == loss.dtype == jnp.float32
    errors = _errors(ref, logits, train_logits, loss, grads)
    bounds = _bounds(ref)
    over = {k: f"{errors[k]:.3g} > {bounds[k]:.3g}" for k in errors if errors[k] > bounds[k]}
    assert not over, (over, _grad_errors(ref, grads))


def _equations(jaxpr):
    """Every equation of `jaxpr` and of its sub-jaxprs (scan bodies, remat, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def _matmul_operand_dtypes(jaxpr):
    """(name stack, operand dtypes) of every dot_general / conv in `jaxpr` and its sub-jaxprs."""
    return [(str(eqn.source_info.name_stack), {str(v.aval.dtype) for v in eqn.invars[:2]})
            for eqn in _equations(jaxpr)
            if eqn.primitive.name in ("dot_general", "conv_general_dilated")]


@pytest.mark.parametrize("arch,extra", [
    ("tadaformer_tiny", dict(num_classes=5, temp_enhance=True, double_tada=True)),
    ("tadaconvnextv2_tiny", TINY_CONVNEXT)])
def test_bfloat16_model_keeps_float32_parameters_and_runs_its_matmuls_in_bfloat16(arch, extra):
    cfg = default_model_config(arch, dtype="bfloat16", dropout_rate=0.0, **extra)
    model = build_model(cfg)
    video = jax.ShapeDtypeStruct((2, cfg.num_frames, cfg.image_size, cfg.image_size, 3),
                                 jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), video)
    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}

    def step(variables, video):
        def loss_fn(p):
            out, state = model.apply(dict(variables, params=p), video, train=True, rngs=rngs,
                                     mutable=["batch_stats"])
            return jnp.mean(out ** 2), (out, state)
        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    # Shapes and dtypes only: traced, never compiled or run.
    (loss, (logits, state)), grads = jax.eval_shape(step, variables, video)
    for tree, name in ((variables, "variables"), (grads, "gradients"), (state, "batch stats")):
        dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(tree)}
        assert dtypes <= {"float32"} and (dtypes or name == "batch stats"), (name, dtypes)
    assert logits.dtype == loss.dtype == jnp.float32

    found = _matmul_operand_dtypes(jax.make_jaxpr(step)(variables, video).jaxpr)
    checked = [(name, dtypes) for name, dtypes in found
               if not any(part in name for part in FLOAT32_ALLOWED)]
    assert len(checked) >= 20
    in_float32 = [name for name, dtypes in checked if dtypes != {"bfloat16"}]
    assert not in_float32, in_float32

def test_xla_attention_is_the_default_computation():
    """'xla' (the default) computes what `jax.nn.dot_product_attention` computes, to
    float32 rounding (its heads-major layout is only faster on XLA:CPU)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 17, 64))
    layer = SpatialAttention(num_heads=4, attention_impl="xla")
    params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)
    got = jax.jit(layer.apply)(params, x)
    n, length, width = x.shape

    @jax.jit
    def reference(p, x):
        qkv = x @ p["in_proj"]["kernel"] + p["in_proj"]["bias"]
        q, k, v = jnp.split(qkv.reshape(n, length, 12, 16), 3, axis=2)
        out = jax.nn.dot_product_attention(q, k, v).reshape(n, length, width)
        return out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]

    want = reference(params["params"], x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert default_model_config("tadaformer_b16").attention_impl == "xla"


def test_xla_attention_gradient_joins_q_k_v_by_concatenation():
    """The gradient of the packed q/k/v is one concatenation of three gradients and equals
    `jax.nn.dot_product_attention`'s; unpacking a stacked (3, ...) array instead would make
    each a zero-padded copy of the whole stack (`pad` in the backward), 3x the traffic."""
    qkv = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 3 * 32))
    cotangent = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 32))

    def reference(packed):
        q, k, v = jnp.split(packed.reshape(2, 9, 12, 8), 3, axis=2)
        return jax.nn.dot_product_attention(q, k, v).reshape(2, 9, 32)

    def gradient(fn):
        return jax.jit(lambda packed: jax.vjp(fn, packed)[1](cotangent)[0])

    ours = gradient(lambda packed: heads_major_attention(packed, 4))
    np.testing.assert_allclose(ours(qkv), gradient(reference)(qkv), rtol=1e-5, atol=1e-6)
    primitives = {eqn.primitive.name for eqn in _equations(jax.make_jaxpr(ours)(qkv).jaxpr)}
    assert "concatenate" in primitives and "pad" not in primitives, sorted(primitives)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_attention_keeps_one_logits_sized_array_per_layer_for_the_backward(dtype,
                                                                              monkeypatch):
    """The softmax's gradient reads only its probabilities, in the dtype the second product
    takes them: compiled, the gradient of three stacked attention layers needs about one
    `(N, heads, L, L)` float32 array per layer less than with `jax.nn.softmax` (whose
    backward also keeps the unnormalised exponentials) and a cast; in float32 the
    softmax's gradient is `jax.nn.softmax`'s."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7, 11)) * 4
    cotangent = jax.random.normal(jax.random.PRNGKey(1), logits.shape)
    grads = [jax.jit(lambda x, fn=fn: jax.vjp(fn, x)[1](cotangent)[0])(logits)
             for fn in (lambda x: softmax_last_axis(x, jnp.float32),
                        lambda x: jax.nn.softmax(x, axis=-1))]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)

    n, length, heads, width = 8, 50, 4, 64
    out_proj = jnp.zeros((width, 3 * width), dtype)

    def stack_of_three(packed):
        for _ in range(3):
            packed = heads_major_attention(packed, heads) @ out_proj
        return jnp.sum(packed.astype(jnp.float32))

    def compiled_bytes():
        analysis = jax.jit(jax.grad(stack_of_three)).lower(
            jnp.zeros((n, length, 3 * width), dtype)).compile().memory_analysis()
        return analysis.temp_size_in_bytes

    ours = compiled_bytes()
    monkeypatch.setattr(tadaformer, "softmax_last_axis",
                        lambda x, dtype: jax.nn.softmax(x, axis=-1).astype(dtype))
    with_jax_softmax = compiled_bytes()
    logits_bytes = n * heads * length * length * 4
    assert with_jax_softmax - ours >= 2 * logits_bytes, (ours, with_jax_softmax, logits_bytes)


@pytest.mark.parametrize("fields,message", [
    (dict(attention_impl="cudnn", dtype="bfloat16"), "needs an NVIDIA GPU with cuDNN"),
    (dict(attention_impl="cudnn"), "set model.dtype=bfloat16"),
    (dict(attention_impl="flash"), "choose one of xla, cudnn"),
])
def test_unusable_attention_impl_is_refused_at_build(fields, message):
    if "GPU" in message and jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="model.attention_impl") as error:
        build_model(default_model_config("tadaformer_tiny", **fields))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_saved_config_without_attention_impl_reads_back():
    stored = default_model_config("tadaformer_tiny").to_dict()
    del stored["attention_impl"]
    stored["rf_kernels"] = list(stored["rf_kernels"])          # as JSON stores it
    cfg = complete_model_config(stored)
    assert cfg.attention_impl == "xla" and cfg.rf_kernels == (3, 3)
    assert isinstance(build_model(cfg), nn.Module)


def test_saved_run_without_attention_impl_reads_back(tmp_path):
    config = ml_collections.ConfigDict({"model": default_model_config("tadaformer_tiny").to_dict()})
    del config.model["attention_impl"]
    run_config.write_run_config(config, str(tmp_path))
    model_cfg = run_config.read_run_config(str(tmp_path)).model
    assert model_cfg.attention_impl == "xla"
    assert isinstance(build_model(model_cfg), nn.Module)


def _block_update(block_of_dtype, x, init_args, small):
    """(update of a float32 block, update of the same block in bfloat16), update = output -
    input in float64, with parameters from `block_of_dtype(float32)` whose leaves matching
    `small` (the branch's last layer) scaled by 1e-4."""
    f32, bf16 = block_of_dtype(jnp.float32), block_of_dtype(jnp.bfloat16)
    variables = jax.jit(lambda key, x: f32.init(key, x, *init_args))(jax.random.PRNGKey(0), x)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 1e-4 if small(jax.tree_util.keystr(path)) else v, variables)
    updates = []
    for block in (f32, bf16):
        out = jax.jit(lambda v, x: block.apply(v, x, *init_args))(variables, x)
        assert out.dtype == jnp.float32
        updates.append(np.asarray(out, np.float64) - np.asarray(x, np.float64))
    return updates


@pytest.mark.parametrize("family", ["tadaconvnextv2", "tadaformer"])
def test_small_block_updates_survive_a_bfloat16_model(family):
    """A block's contribution (ConvNeXt's layer scale starts at 1e-6, TAdaFormer's
    `tada_proj` at zero) must not be rounded away in a bfloat16 sum: blocks add their
    branches to a float32 residual stream and return float32. With branches 1e-4 of the
    stream (below half a bfloat16 step, 2**-9, of the stream), the bfloat16 block's update
    equals the float32 block's to bfloat16 precision (a residual added in bfloat16 rounds it
    to 0 or to multiples of the stream's 2**-8)."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8, 32) if family == "tadaconvnextv2"
                          else (4, 1 + 4 * 4, 64))
    if family == "tadaconvnextv2":
        updates = _block_update(lambda dtype: TAdaConvNeXtV2Block(
            32, 2, (3, 3), 16, 1e-4, "fast", "shifted", dtype=dtype), x, (0.0, False),
            lambda path: False)
    else:
        updates = _block_update(lambda dtype: TAdaFormerBlock(
            64, 2, 4, 2, 2, (3, 3), 16, False, False, "fast", "shifted", dtype=dtype), x,
            (0.0, False), lambda path: any(f"'{n}'" in path for n in
                                          ("tada_proj", "out_proj", "c_proj")))
    f32_update, bf16_update = updates
    assert np.abs(f32_update).max() < 1e-3 * np.abs(np.asarray(x)).max()
    np.testing.assert_allclose(bf16_update, f32_update, rtol=0,
                               atol=0.05 * np.abs(f32_update).max())
    # The first block of a ConvNeXt stage gets the bf16 output of the downsampling conv.
    if family == "tadaconvnextv2":
        block = TAdaConvNeXtV2Block(32, 2, (3, 3), 16, 1e-6, "fast", "shifted",
                                    dtype=jnp.bfloat16)
        variables = jax.jit(lambda key, x: block.init(key, x, 0.0, False))(jax.random.PRNGKey(0), x)
        out = jax.jit(lambda v, x: block.apply(v, x, 0.0, False))(variables, x.astype(jnp.bfloat16))
        assert out.dtype == jnp.float32


def test_train_with_cudnn_attention_on_a_cpu_stops_with_one_line(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    code, out = run("train.py", "--config", "configs/quickstart.py", f"--workdir={tmp_path / 'run'}",
                    "--config.model.dtype=bfloat16", "--config.model.attention_impl=cudnn")
    assert_one_line_error(code, out, "model.attention_impl='cudnn'", "NVIDIA GPU")
    assert not (tmp_path / "run").exists()
