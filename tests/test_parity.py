"""Parity with the original PyTorch code, data-driven over `$TADAX_FIXTURES/fixtures.json`.

For every fixture: write the entry's `model` block as the original's YAML
settings file, convert `NAME.pyth` with the real importer (`python -m
tadax.convert zoo --upstream-config`, through an Orbax directory), build the
model from the converted directory's config alone, and match the original's
eval outputs, one train-mode forward/backward, and the BatchNorm statistics
after it, with the fast TAdaConv path in both layouts of the blocks (`scan_layers`:
the converted weights stacked, the gradients and statistics unstacked to compare) and
with both depthwise convolutions (the CPU's shifted sums, XLA's grouped convolution that
accelerators use), within the fixtures README's tolerances. The per-frame vmapped
TAdaConv (`tadaconv_impl='vmap'`, the definition) is held to the fast path and to a numpy
definition in tests/test_tadaconv.py, values and gradients, in the configurations both
model families use.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from conftest import fixture_entries, fixtures_dir
from tadax import checkpoint_io, convert
from tadax.models import build_model, default_model_config, from_upstream, layout
from tadax.weights import mapping

ENTRIES = fixture_entries()
if not ENTRIES:
    ENTRIES = [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no fixtures.json in {fixtures_dir()} (set TADAX_FIXTURES)"))]
IDS = [e["name"] if isinstance(e, dict) else "absent" for e in ENTRIES]


def _write_settings(flat, path):
    """The fixture's flat `VIDEO.BACKBONE.DEPTH: 1` settings as the original's nested YAML."""
    tree = {}
    for key, value in flat.items():
        *blocks, leaf = key.split(".")
        node = tree
        for block in blocks:
            node = node.setdefault(block, {})
        node[leaf] = value
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return path


@functools.lru_cache(maxsize=None)
def _converted(name: str, tmp_root: str):
    """Runs the importer CLI on NAME.pyth with the fixture's settings file once.

    Returns (variables, model config saved with them).
    """
    entry = next(e for e in ENTRIES if e["name"] == name)
    settings = _write_settings(entry["model"], f"{tmp_root}/{name}.yaml")
    out = f"{tmp_root}/{name}"
    code = convert.main(["zoo", "--input", str(fixtures_dir() / f"{name}.pyth"), "--output", out,
                         "--upstream-config", settings])
    assert code == 0
    return checkpoint_io.load_variables(out)


def _with(cfg, **changes):
    """The saved config with run-time choices changed (implementation, training noise)."""
    fields = dict(cfg.to_dict(), **changes)
    return default_model_config(fields.pop("arch"), **fields)


def _plain(cfg):
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.to_dict().items()}


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("converted"))


# (TAdaConv implementation, scanned blocks, depthwise convolution): each layout and each
# depthwise convolution ('auto' picks the shifted sums on CPU, 'lax', XLA's grouped conv,
# on accelerators). Not scanned with 'lax': on XLA:CPU the grouped conv's gradient inside
# a scan runs ~25x slower than unrolled (ConvNeXt: 12 s a step), nothing an accelerator has.
VARIANTS = [("fast", True, "shifted"), ("fast", False, "lax")]


@pytest.mark.parametrize("impl,scan_layers,depthwise", VARIANTS)
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_matches_original(entry, impl, scan_layers, depthwise, tmp_root):
    name = entry["name"]
    ref = np.load(fixtures_dir() / f"{name}.npz")
    variables, saved_cfg = _converted(name, tmp_root)
    # The weights and the settings file agree on every field, as the importer saw them.
    assert _plain(saved_cfg) == _plain(from_upstream(entry["model"]))
    model = build_model(_with(saved_cfg, tadaconv_impl=impl, scan_layers=scan_layers,
                              depthwise_impl=depthwise))
    variables = layout.to_layout(variables, scan_layers)
    video = jnp.asarray(ref["video_ncthw"]).transpose(0, 2, 3, 4, 1)
    assert video.shape == (entry["batch"], entry["num_input_frames"], entry["crop"], entry["crop"], 3)
    n_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n_params == entry["num_params"]

    # One program for both (XLA computes the shared backbone once).
    features, logits = jax.jit(lambda v, x: (model.apply(v, x, method="features"),
                                             model.apply(v, x)))(variables, video)
    np.testing.assert_allclose(features, ref["features_eval"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref["logits_eval"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(jax.nn.softmax(logits), ref["probs_eval"], atol=1e-4, rtol=0)

    # One train-mode step as the fixture made it: batch statistics, no drop
    # path, the head's dropout skipped.
    train_model = build_model(_with(saved_cfg, tadaconv_impl=impl, dropout_rate=0.0,
                                    drop_path_rate=0.0, scan_layers=scan_layers,
                                    depthwise_impl=depthwise))
    labels = jnp.asarray(ref["labels"])

    def loss_fn(params):
        out, state = train_model.apply(
            dict(variables, params=params), video, train=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)})
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean(), (out, state)

    (loss, (train_logits, state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"])
    np.testing.assert_allclose(train_logits, ref["logits_train"], atol=1e-4, rtol=0)
    assert abs(float(loss) - float(ref["loss_train"])) <= 1e-5 * abs(float(ref["loss_train"]))

    flat_grads = mapping.flatten({"params": layout.unrolled(grads)})
    flat_state = mapping.flatten(layout.unrolled(dict(state)))
    grad_keys = [k for k in ref.files if k.startswith("grad/")]
    stat_keys = [k for k in ref.files if k.startswith("state_after_train/")
                 and not k.endswith("num_batches_tracked")]
    assert grad_keys
    for key in grad_keys:
        want = ref[key]
        path = mapping.flax_path(key[len("grad/"):], want.ndim)
        got = np.asarray(flat_grads[path])
        want = mapping.torch_to_flax_array(want, path[-1], got.shape)
        scale = max(float(np.abs(want).max()), 1e-8)
        err = float(np.abs(got - want).max())
        assert err <= 1e-3 * scale, f"{key}: max error {err:.3g}, tensor max {scale:.3g}"
    for key in stat_keys:
        path = mapping.flax_path(key[len("state_after_train/"):], ref[key].ndim)
        np.testing.assert_allclose(flat_state[path], ref[key], atol=1e-5, rtol=0, err_msg=key)
