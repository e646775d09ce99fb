"""The two layouts of the blocks (`scan_layers`): conversion, the same function, the same
training step, per-block drop-path rates and rngs, checkpoints across layouts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from test_features import random_variables
from tadax.models import build_model, default_model_config, layout
from tadax.models.repeat import remat_name, scan_blocks
from tadax.train import optim, sharding, state as state_lib, steps

SMALL = {
    "tadaformer_tiny": dict(depth=2, width=64, num_heads=2, rf_head_dim=16, image_size=16,
                            num_frames=4),
    "tadaconvnextv2_tiny": dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), rf_head_dim=8,
                                image_size=32, num_frames=4),
}


def model_and_variables(arch, scan_layers, **overrides):
    """(config, model, random variables in the model's layout: no init is compiled)."""
    cfg = default_model_config(arch, num_classes=5, scan_layers=scan_layers,
                               **dict(SMALL[arch], **overrides))
    model = build_model(cfg)
    return cfg, model, random_variables(model, cfg)


def leaves_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("arch", list(SMALL))
def test_round_trip_and_the_scanned_model_tree(arch):
    _, _, unrolled = model_and_variables(arch, False)
    _, _, scanned = model_and_variables(arch, True)
    stacked = layout.stacked(unrolled)
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(scanned)
    for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(scanned)):
        assert a.shape == b.shape
    leaves_equal(layout.unrolled(stacked), unrolled)
    # JAX arrays take another path (one program per group): the same trees.
    on_device = layout.stacked(jax.device_put(unrolled))
    leaves_equal(on_device, stacked)
    leaves_equal(layout.unrolled(on_device), unrolled)
    assert layout.layout_of(stacked) is True and layout.layout_of(unrolled) is False
    leaves_equal(layout.stacked(stacked), stacked)          # already there: unchanged
    # Anything keyed like the params: optimizer moments (NamedTuples) and abstract trees.
    opt = jax.device_get(jax.jit(optim.optax.adam(1e-3).init)(unrolled["params"]))
    leaves_equal(layout.unrolled(layout.stacked(opt)), opt)
    shapes = jax.eval_shape(lambda: unrolled)
    assert jax.tree_util.tree_map(lambda s: s.shape, layout.stacked(shapes)) == \
        jax.tree_util.tree_map(np.shape, stacked)


@pytest.mark.parametrize("arch,modes,dtype", [("tadaformer_tiny", (False, True), "float32"),
                                              ("tadaconvnextv2_tiny", (False,), "float32"),
                                              ("tadaconvnextv2_tiny", (False,), "bfloat16")])
def test_both_layouts_compute_the_same_function(arch, modes, dtype):
    """Eval, and for TAdaFormer (BatchNorm) also train mode: logits and batch statistics.
    ConvNeXt's train mode differs from eval only by drop path and dropout. In bfloat16 a
    ConvNeXt stage's input (bfloat16) and its blocks' outputs (the float32 residual
    stream) differ in dtype, which a scan's carry does not allow (catches: scanning
    the stage without casting its input)."""
    cfg, unrolled_model, variables = model_and_variables(arch, False, dtype=dtype)
    _, scanned_model, _ = model_and_variables(arch, True, dtype=dtype)
    video = jax.random.normal(jax.random.key(1), (2, 4, cfg.image_size, cfg.image_size, 3))
    rngs = {"dropout": jax.random.key(2), "drop_path": jax.random.key(3)}
    for train in modes:
        def run(model, v):
            return model.apply(v, video, train=train, rngs=rngs, mutable=["batch_stats"])
        a, sa = jax.jit(run, static_argnums=0)(unrolled_model, variables)
        b, sb = jax.jit(run, static_argnums=0)(scanned_model, layout.stacked(variables))
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        for x, y in zip(jax.tree_util.tree_leaves(sa),
                        jax.tree_util.tree_leaves(layout.unrolled(sb))):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def _train(scan_layers, params):
    cfg = common.tadaformer_recipe(
        name="t", arch="tadaformer_tiny", dataset="kinetics400", num_classes=5, frames=4,
        base_lr=1e-2, epochs=2, warmup_epochs=0, warmup_start_lr=1e-6, layer_decay=0.5, batch=2,
        start_from="")
    cfg.model.update(SMALL["tadaformer_tiny"], scan_layers=scan_layers, dropout_rate=0.0,
                     remat="dots" if scan_layers else "none")
    cfg.optimizer.layer_decay.num_layers = cfg.model.depth
    # Softmax ignores the key projection's bias: its gradient is rounding noise, which
    # Adam's default eps would turn into full-size steps that differ between layouts.
    cfg.optimizer.eps = 1e-4
    model = build_model(cfg.model)
    mesh = sharding.make_mesh(cfg.mesh)
    params = layout.to_layout(params, scan_layers)
    tx, schedule = optim.build_optimizer(params, cfg.optimizer, 10, cfg.train.epochs)
    _, shardings = state_lib.train_state_spec(model, tx, cfg, mesh)
    st = state_lib.create_train_state(model, tx, cfg, shardings, {"params": params})
    step = steps.make_train_step(model, tx, schedule, cfg, mesh, shardings)
    rng = np.random.default_rng(0)
    for _ in range(2):
        batch = {"video": rng.normal(size=(2, 4, 16, 16, 3)).astype(np.float32),
                 "label": rng.integers(0, 5, 2).astype(np.int32)}
        st, _ = step(st, sharding.global_batch(batch, mesh))
    return st


def test_train_steps_give_the_same_weights_in_both_layouts():
    """Two AdamW steps with layer-wise lr decay (per-block multipliers), no drop path; the
    scanned one with remat 'dots'. Random weights (tada_proj not zero) let every gradient flow."""
    params = model_and_variables("tadaformer_tiny", False)[2]["params"]
    a, b = _train(False, params), _train(True, params)
    assert layout.layout_of(b["params"]) is True
    # The smallest step a parameter takes (the patch embedding's lr, base 1e-2 x 0.5^3).
    # Rounding in another summation order moves Adam's normalised step of a near-zero
    # gradient by a fraction of a percent of it; a multiplier given to the wrong block, or
    # a gradient term lost to remat, moves a whole leaf by a large part of a step.
    smallest_step = 1e-2 * 0.5 ** (SMALL["tadaformer_tiny"]["depth"] + 1)
    for tree in ("params", "batch_stats", "opt_state"):
        atol = 0.02 * smallest_step if tree == "params" else 2e-6
        for x, y in zip(jax.tree_util.tree_leaves(a[tree]),
                        jax.tree_util.tree_leaves(layout.unrolled(b[tree]))):
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)
    moved = jax.tree_util.tree_map(lambda x, y: float(np.abs(x - y).max()),
                                   jax.device_get(a["params"]), params)
    assert min(jax.tree_util.tree_leaves(moved)) > 0     # every parameter was updated


class _Draw(nn.Module):
    """A block that shifts its carry and records its drop rate and one 'drop_path' draw."""

    @nn.compact
    def __call__(self, x, rate, train):
        draw = jax.random.uniform(self.make_rng("drop_path"))
        return jnp.roll(x, 2).at[0].set(rate).at[1].set(draw)


def test_scan_feeds_each_block_its_drop_rate_and_its_own_rng():
    rates = [0.0, 0.1, 0.2]
    out = _Draw(name="blocks").apply({}, jnp.zeros(6), rngs={"drop_path": jax.random.key(0)},
                                     method=lambda m, x: scan_blocks(m, x, rates, True))
    np.testing.assert_allclose(out[0::2][::-1], rates, atol=1e-7)
    assert len(set(np.asarray(out[1::2]).tolist())) == 3


def test_stacked_leaves_are_split_like_one_block():
    assert sharding._fsdp_spec((24, 1024, 4096), 8, 2 ** 16, stacked=True) == \
        jax.sharding.PartitionSpec(None, None, "fsdp")
    assert sharding._fsdp_spec((32, 16), 4, 1, stacked=True) == \
        jax.sharding.PartitionSpec(None, "fsdp")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    tree = {"opt_state": {"mu": {"backbone": {"layers": {"w": jax.ShapeDtypeStruct(
        (4, 8), jnp.float32)}}}}}
    out = sharding.tree_shardings(mesh, tree, [(".*", "fsdp")], 1)
    assert out["opt_state"]["mu"]["backbone"]["layers"]["w"].spec[0] is None


def test_saved_remat_booleans_still_load():
    assert remat_name(False) == "none" and remat_name(True) == "full"
    with pytest.raises(ValueError, match="unknown remat policy 'some'"):
        remat_name("some")


@pytest.mark.parametrize("arch", list(SMALL))
def test_converted_weights_start_a_scanned_model(arch):
    """init.checkpoint and eval.py load converted (unrolled) weights through select_pretrained."""
    _, _, loaded = model_and_variables(arch, False)
    cfg, model, _ = model_and_variables(arch, True)
    abstract = state_lib.abstract_variables(model, cfg)
    selected = state_lib.select_pretrained(loaded, abstract, fresh=r"^$")
    leaves_equal(selected, layout.stacked(loaded))


def test_run_checkpoint_restores_into_the_other_layout(tmp_path):
    from tadax.train.checkpointing import RunCheckpoints, restore_checkpoint
    ckpt_cfg = ml_collections.ConfigDict(dict(every_steps=1, every_secs=3600.0, keep=1,
                                              keep_best=0, best_metric="val/top1"))
    _, model, variables = model_and_variables("tadaformer_tiny", False)
    params = variables["params"]
    tx = optim.optax.adam(1e-3)
    saved = {"step": jnp.int32(3), "params": params, "batch_stats": variables["batch_stats"],
             "opt_state": tx.init(jax.tree_util.tree_map(lambda p: p + 1.0, params)),
             "ema": {}}
    ckpts = RunCheckpoints(str(tmp_path), ckpt_cfg)
    ckpts.save(3, saved, 3)
    ckpts.wait()
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(fsdp=1)))
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(mesh)),
        layout.stacked(saved))
    ckpts.close()
    restored, position = restore_checkpoint(tmp_path, 3, abstract)
    assert position == {"step": 3}
    leaves_equal(restored, layout.stacked(saved))
