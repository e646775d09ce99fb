"""Train step pieces in-process: gradient accumulation, label smoothing, sharding rules,
pretrained-weight checks, EMA."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tadax.train import sharding, state as state_lib, steps


class TinyVideoNet(nn.Module):
    """A BatchNorm-free stand-in: mean over time and space, dropout, linear head."""
    classes: int = 5
    dropout: float = 0.0

    @nn.compact
    def __call__(self, video, train=False):
        x = nn.Dense(8, name="embed")(video.mean(axis=(1, 2, 3)))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.classes, name="head")(nn.gelu(x))


def config(accum=1, ema=0.0, mixup=0.0, cutmix=0.0):
    return ml_collections.ConfigDict(dict(
        seed=0,
        data=dict(mixup_alpha=mixup, cutmix_alpha=cutmix, mixup_prob=1.0, mixup_switch_prob=0.5,
                  num_classes=5),
        model=dict(num_frames=2, image_size=4),
        train=dict(grad_accum_steps=accum, label_smoothing=0.1, ema_decay=ema),
        sharding=dict(rules=[("batch_stats", "replicate"), (".*", "fsdp")], fsdp_min_size=1),
        mesh=dict(fsdp=1)))


def random_batch(rng):
    return {"video": rng.normal(size=(8, 2, 4, 4, 3)).astype(np.float32),
            "label": rng.integers(0, 5, 8).astype(np.int32)}


class TinyBatchNormNet(nn.Module):
    """TinyVideoNet with a BatchNorm (running statistics in `batch_stats`) before the head."""
    classes: int = 5

    @nn.compact
    def __call__(self, video, train=False):
        x = nn.Dense(8, name="embed")(video.mean(axis=(1, 2, 3)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        return nn.Dense(self.classes, name="head")(nn.gelu(x))


def setup(cfg, model=None, schedule=None):
    """(mesh, `fresh() -> ` a new initial train state, jitted train step) of `model`
    (TinyVideoNet) with AdamW at `schedule` (1e-2)."""
    model = model or TinyVideoNet()
    mesh = sharding.make_mesh(cfg.mesh)
    schedule = schedule or (lambda step: jnp.float32(1e-2))
    tx = optax.adamw(schedule)
    _, shard = state_lib.train_state_spec(model, tx, cfg, mesh)
    return (mesh, lambda: state_lib.create_train_state(model, tx, cfg, shard),
            steps.make_train_step(model, tx, schedule, cfg, mesh, shard))


def run(accum, ema=0.0, n_steps=2, mixup=0.0, cutmix=0.0, batches=None):
    """`n_steps` steps on random batches (or `batches`, one per step)."""
    mesh, fresh, step = setup(config(accum, ema, mixup, cutmix))
    st = fresh()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_steps):
        batch = random_batch(rng) if batches is None else batches[i]
        st, m = step(st, sharding.global_batch(batch, mesh))
        out.append(m)
    return st, out


def test_gradient_accumulation_equals_one_big_batch():
    s1, m1 = run(accum=1)
    s4, m4 = run(accum=4)
    for a, b in zip(m1, m4):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    for x, y in zip(jax.tree_util.tree_leaves(s1["params"]), jax.tree_util.tree_leaves(s4["params"])):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert int(s4["step"]) == 2


def test_accumulation_carries_batch_statistics_through_the_micro_batches():
    """A model with BatchNorm (the quick-start TAdaFormer), 4 micro-batches: the running
    statistics are updated micro-batch after micro-batch (example i in micro-batch i mod 4,
    each normalised with its own batch statistics), and the update uses the mean gradient."""
    from tadax.models import build_model, default_model_config
    model = build_model(default_model_config("tadaformer_tiny", num_classes=5, num_frames=4,
                                             dropout_rate=0.0))
    cfg = config(accum=4)
    cfg.model = ml_collections.ConfigDict(dict(num_frames=4, image_size=32))
    mesh = sharding.make_mesh(cfg.mesh)
    tx = optax.sgd(0.1)
    _, shard = state_lib.train_state_spec(model, tx, cfg, mesh)
    st = state_lib.create_train_state(model, tx, cfg, shard)
    start = jax.device_get(st)
    assert jax.tree_util.tree_leaves(start["batch_stats"])
    rng = np.random.default_rng(0)
    batch = {"video": rng.normal(size=(8, 4, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32)}
    step = steps.make_train_step(model, tx, lambda s: jnp.float32(0.1), cfg, mesh, shard)
    new, _ = step(st, sharding.global_batch(batch, mesh))

    rngs = {"dropout": jax.random.PRNGKey(0), "drop_path": jax.random.PRNGKey(1)}

    def micro_step(params, stats, video, labels):
        logits, updated = model.apply({"params": params, "batch_stats": stats}, video, train=True,
                                      mutable=["batch_stats"], rngs=rngs)
        return steps.cross_entropy(logits, labels, 0.1), updated["batch_stats"]

    grad_fn = jax.jit(jax.grad(micro_step, has_aux=True))
    stats, grad_sum = start["batch_stats"], None
    for i in range(4):
        g, stats = grad_fn(start["params"], stats, batch["video"][i::4], batch["label"][i::4])
        g = jax.device_get(g)
        grad_sum = g if grad_sum is None else jax.tree_util.tree_map(np.add, grad_sum, g)
    # Not carrying them would leave only the last micro-batch's update: far from it.
    _, last_only = grad_fn(start["params"], start["batch_stats"], batch["video"][3::4],
                           batch["label"][3::4])

    for got, want in zip(*(jax.tree_util.tree_leaves(t) for t in (new["batch_stats"], stats))):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
    stats, last_only = jax.device_get((stats, last_only))
    assert max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(last_only))) > 1e-3
    for got, p0, g in zip(*(jax.tree_util.tree_leaves(jax.device_get(t)) for t in
                            (new["params"], start["params"], grad_sum))):
        np.testing.assert_allclose(got, p0 - 0.1 * g / 4, atol=1e-6, rtol=1e-5)


def test_mixing_step_is_a_function_of_the_step():
    """Mixup on: the same state and batch give the same update (a resumed run mixes as an
    uninterrupted one); the same batch at another step number mixes differently; both
    differ from the unmixed step."""
    batch = random_batch(np.random.default_rng(0))

    def stepper(cfg):
        mesh, fresh, step = setup(cfg)

        def one_step(step_number):
            st = fresh()
            st["step"] = jnp.asarray(step_number, st["step"].dtype)
            new, metrics = step(st, sharding.global_batch(batch, mesh))
            return jax.device_get(new["params"]), float(metrics["loss"])
        return one_step

    mixed = stepper(config(mixup=8.0))        # coefficients near 1/2: a visible change
    params, loss = mixed(3)
    again, loss_again = mixed(3)
    assert loss == loss_again
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
    _, other = mixed(4)
    _, plain = stepper(config())(3)
    assert abs(other - loss) > 1e-3 and abs(plain - loss) > 1e-3


def test_micro_batches_mix_within_themselves():
    """With 2 micro-batches (example i in micro-batch i mod 2) whose clips are each one
    repeated clip, mixing within a micro-batch changes nothing: the mixed accumulated step
    equals the unmixed one, while mixing the whole batch (one micro-batch) changes it
    (unmixed, one micro-batch equals two: test_gradient_accumulation_equals_one_big_batch)."""
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(2):
        clips = rng.normal(size=(2, 2, 4, 4, 3)).astype(np.float32)
        batches.append({"video": clips[np.arange(8) % 2],
                        "label": np.arange(8, dtype=np.int32) % 2})
    _, plain2 = run(accum=2, batches=batches)
    _, mixed2 = run(accum=2, mixup=0.8, cutmix=1.0, batches=batches)
    np.testing.assert_allclose([m["loss"] for m in mixed2], [m["loss"] for m in plain2],
                               rtol=1e-5)
    _, mixed1 = run(accum=1, mixup=0.8, cutmix=1.0, batches=batches)
    assert max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(mixed1, plain2)) > 1e-3


def test_each_micro_batch_draws_its_own_random_numbers():
    """Two micro-batches X and Y (example i in micro-batch i mod 2) through dropout 0.5,
    then the same step with their contents swapped: the mean of the micro-batch losses
    and gradients is symmetric in them, so with the same random numbers for both the two
    steps would agree. Each micro-batch draws its own (dropout here; mixing and drop path
    come from the same key), so they differ. One compile.

    Catches: every micro-batch given the step's key instead of one folded with its index
    (the same mixing, dropout and drop-path masks in all of them)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 4, 2, 4, 4, 3)).astype(np.float32)
    mesh, fresh, step = setup(config(accum=2), TinyVideoNet(dropout=0.5))
    losses = []
    for first, second in ((x, y), (y, x)):
        video = np.stack([first, second], axis=1).reshape((8,) + x.shape[1:])
        batch = {"video": video, "label": np.arange(8, dtype=np.int32) % 5}
        batch["label"][1::2] = batch["label"][0::2]          # labels follow their clips
        _, metrics = step(fresh(), sharding.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    assert abs(losses[0] - losses[1]) > 1e-3, losses


def test_an_epoch_is_the_whole_global_batches_of_the_train_split(monkeypatch):
    """The schedule's epoch: train videos // global batch steps (the original's training
    loader drops the last partial batch), at least 1; or `train.steps_per_epoch` if set.

    Catches: a partial last batch counted (1001 videos at 64: 16 steps, not 15), the
    explicit setting ignored."""
    from tadax.data import pipeline
    from tadax.train import trainer
    monkeypatch.setattr(pipeline, "num_examples", lambda data_cfg, split: {"train": 1001}[split])
    cfg = ml_collections.ConfigDict(dict(train=dict(steps_per_epoch=0, global_batch_size=64),
                                         data=dict()))
    assert trainer.steps_per_epoch(cfg) == 15
    cfg.train.global_batch_size = 2048
    assert trainer.steps_per_epoch(cfg) == 1
    cfg.train.steps_per_epoch = 7
    assert trainer.steps_per_epoch(cfg) == 7


def test_mixing_needs_two_clips_per_device_and_micro_batch():
    from tadax.errors import ConfigError
    from tadax.train import trainer
    cfg = ml_collections.ConfigDict(dict(
        train=dict(global_batch_size=4, grad_accum_steps=4), eval=dict(batch_size=4),
        data=dict(mixup_alpha=0.0, cutmix_alpha=1.0)))
    with pytest.raises(ConfigError, match="needs at least 2"):
        trainer._check_batch_layout(cfg)
    cfg.train.grad_accum_steps = 2
    trainer._check_batch_layout(cfg)


def test_ema_is_the_decayed_average_of_the_weights_after_each_step():
    """EMA decay 0.9 over 3 steps of a model with BatchNorm: e_0 = v_0 (the initial
    variables), e_k = 0.9 e_(k-1) + 0.1 v_k with v_k the params and batch statistics after
    step k, so e_3 = 0.729 v_0 + 0.081 v_1 + 0.09 v_2 + 0.1 v_3, from the recorded states.
    The logged lr of step k is the schedule at k, the lr its update uses.

    Catches: the decay on the new weights (0.1 e + 0.9 v; with decay 0.5 both agree), the
    EMA fed the params or the statistics from before the step, lr logged a step ahead."""
    schedule = lambda step: 1e-2 / (1.0 + jnp.asarray(step, jnp.float32))  # noqa: E731
    mesh, fresh, step = setup(config(ema=0.9), TinyBatchNormNet(), schedule)
    st = fresh()
    states = [jax.device_get(st)]
    rng = np.random.default_rng(0)
    for k in range(3):
        st, metrics = step(st, sharding.global_batch(random_batch(rng), mesh))
        states.append(jax.device_get(st))
        assert float(metrics["lr"]) == pytest.approx(1e-2 / (1 + k))
    assert jax.tree_util.tree_leaves(states[0]["batch_stats"])
    for col in ("params", "batch_stats"):
        v = [jax.tree_util.tree_leaves(s[col]) for s in states]
        for i, got in enumerate(jax.tree_util.tree_leaves(states[-1]["ema"][col])):
            want = 0.729 * v[0][i] + 0.081 * v[1][i] + 0.09 * v[2][i] + 0.1 * v[3][i]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            assert np.abs(v[3][i] - v[0][i]).max() > 1e-4      # the weights did move


def test_ema_starts_from_the_pretrained_weights():
    """A run initialised from a checkpoint starts its EMA there, not at the random init.

    Catches: the EMA copied from the fresh variables before the checkpoint is laid over."""
    cfg = config(ema=0.9)
    model, tx = TinyVideoNet(), optax.adamw(1e-2)
    mesh = sharding.make_mesh(cfg.mesh)
    _, shard = state_lib.train_state_spec(model, tx, cfg, mesh)
    pretrained = {"params": {"head": {"kernel": np.full((8, 5), 0.25, np.float32),
                                      "bias": np.arange(5, dtype=np.float32)}}}
    st = jax.device_get(state_lib.create_train_state(model, tx, cfg, shard, pretrained))
    for tree in (st["params"], st["ema"]["params"]):
        np.testing.assert_array_equal(tree["head"]["kernel"], np.full((8, 5), 0.25))
        np.testing.assert_array_equal(tree["head"]["bias"], np.arange(5))
    np.testing.assert_array_equal(st["ema"]["params"]["embed"]["kernel"],
                                  st["params"]["embed"]["kernel"])


def test_eval_variables_are_the_ema_ones_on_request():
    """Catches: `--ema` / `eval.use_ema` evaluating the raw weights, or a run without an
    EMA failing instead of using its weights."""
    state = {"params": {"w": 1}, "batch_stats": {"m": 2},
             "ema": {"params": {"w": 3}, "batch_stats": {"m": 4}}}
    assert steps.eval_variables(state, True) == {"params": {"w": 3}, "batch_stats": {"m": 4}}
    assert steps.eval_variables(state, False) == {"params": {"w": 1}, "batch_stats": {"m": 2}}
    assert steps.eval_variables(dict(state, ema={}, batch_stats={}), True) == {"params": {"w": 1}}


def test_label_smoothing_matches_the_original_targets():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    s = 0.1
    target = np.array([s / 3, 1 - s + s / 3, s / 3])    # label 1
    want = -(target * jax.nn.log_softmax(logits)[0]).sum()
    assert float(steps.cross_entropy(logits, jnp.array([1]), s)) == pytest.approx(float(want))


def test_cross_entropy_smooths_mixed_targets_and_averages_the_batch():
    """Smoothing s = 0.2 over C = 4 classes applied to mixup targets as the original
    does (it mixes smoothed one-hots): 0.7 of class 1 and 0.3 of class 3 -> 0.8 x (0, 0.7,
    0, 0.3) + 0.05; the loss is the batch mean of -sum(target x log softmax), numpy.

    Catches: mixed targets left unsmoothed (or smoothed twice), the batch summed."""
    logits = np.array([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, -2.0]], np.float32)
    soft = np.array([[0.0, 0.7, 0.0, 0.3], [0.0, 0.7, 0.0, 0.3]], np.float32)
    want_targets = np.array([[0.05, 0.61, 0.05, 0.29]] * 2)
    np.testing.assert_allclose(0.8 * soft + 0.2 / 4, want_targets, rtol=1e-6)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -(want_targets * log_p).sum(1).mean()
    got = steps.cross_entropy(jnp.asarray(logits), jnp.array([1, 1]), 0.2, jnp.asarray(soft))
    assert float(got) == pytest.approx(want, rel=1e-6)
    hard = -(np.array([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]]) * log_p).sum(1).mean()
    assert float(steps.cross_entropy(jnp.asarray(logits), jnp.array([1, 3]), 0.2)) == \
        pytest.approx(hard, rel=1e-6)


def test_fsdp_rule_splits_the_largest_divisible_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    assert sharding._fsdp_spec((768, 3072), 4, 2 ** 16) == jax.sharding.PartitionSpec(None, "fsdp")
    assert sharding._fsdp_spec((6, 10), 4, 1) == jax.sharding.PartitionSpec()      # none divisible
    assert sharding._fsdp_spec((768,), 4, 2 ** 16) == jax.sharding.PartitionSpec()  # small
    tree = {"batch_stats": {"m": jax.ShapeDtypeStruct((4096, 64), jnp.float32)},
            "params": {"w": jax.ShapeDtypeStruct((4096, 64), jnp.float32)}}
    out = sharding.tree_shardings(mesh, tree, [("batch_stats", "replicate"), (".*", "fsdp")], 1)
    assert out["batch_stats"]["m"].spec == jax.sharding.PartitionSpec()
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.tree_shardings(mesh, tree, [("params", "fsdp")], 1)


def test_pretrained_weights_that_do_not_fit_are_refused():
    abstract = {"params": {"head": {"kernel": jax.ShapeDtypeStruct((8, 5), jnp.float32)},
                           "embed": {"kernel": jax.ShapeDtypeStruct((3, 8), jnp.float32)}}}
    loaded = {"params": {"head": {"kernel": np.zeros((8, 7))},
                         "embed": {"kernel": np.zeros((3, 8))}, "extra": {"w": np.zeros(2)}}}
    with pytest.raises(state_lib.InitError) as err:
        state_lib.select_pretrained(loaded, abstract, fresh=r"^$")
    assert "params/head/kernel: (8, 7) vs model (8, 5)" in str(err.value)
    assert "params/extra/w" in str(err.value)
    del loaded["params"]["extra"]
    kept = state_lib.select_pretrained(loaded, abstract, fresh=r"^head/")
    assert list(kept["params"]) == ["embed"]


def test_checkpoints_keep_the_newest_and_the_best(tmp_path):
    from tadax.train.checkpointing import RunCheckpoints, restore_checkpoint
    cfg = ml_collections.ConfigDict(dict(every_steps=1, every_secs=3600.0, keep=2, keep_best=1,
                                         best_metric="val/top1"))
    ckpts = RunCheckpoints(str(tmp_path), cfg)
    for step, top1 in zip(range(1, 6), [50.0, 90.0, 10.0, 20.0, 30.0]):
        ckpts.save(step, {"w": np.full(3, step, np.float32)}, step, {"val/top1": top1})
        ckpts.wait()
    kept = sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit())
    assert kept == [2, 4, 5]
    ckpts.close()
    state, position = restore_checkpoint(tmp_path, 5, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    np.testing.assert_array_equal(state["w"], [5, 5, 5])
    assert position == {"step": 5}


def test_save_decisions_are_orbax_policies(tmp_path):
    """every_steps, the validation interval, the last step, and a time policy that also
    saves a new run's first step; nothing else."""
    from tadax.train.checkpointing import RunCheckpoints
    cfg = ml_collections.ConfigDict(dict(every_steps=4, every_secs=3600.0, keep=20, keep_best=0,
                                         best_metric="val/top1"))
    ckpts = RunCheckpoints(str(tmp_path), cfg, every=(3,), on_steps=(10,))
    saved = []
    for step in range(1, 11):
        if ckpts.should_save(step):
            ckpts.save(step, {"w": np.zeros(2, np.float32)}, step)
            saved.append(step)
        assert not ckpts.reached_preemption(step)
    ckpts.wait()
    ckpts.close()
    assert saved == [1, 3, 4, 6, 8, 9, 10]


def test_load_weights_reads_only_the_model_variables_of_a_run(tmp_path):
    """From a run checkpoint: params (and the EMA ones on request), never the optimizer state."""
    from tadax.checkpoint_io import CheckpointError
    from tadax.train.checkpointing import RunCheckpoints, load_weights
    every_step = ml_collections.ConfigDict(
        dict(every_steps=1, every_secs=3600.0, keep=1, keep_best=0, best_metric="val/top1"))
    ckpts = RunCheckpoints(str(tmp_path / "checkpoints"), every_step)
    params = {"embed": {"kernel": jnp.ones((3, 2))}}
    ema = {"embed": {"kernel": jnp.full((3, 2), 2.0)}}
    ckpts.save(4, {"step": jnp.int32(4), "params": params, "batch_stats": {},
                   "opt_state": {"mu": jnp.full((3, 2), 7.0)},
                   "ema": {"params": ema, "batch_stats": {}}}, 4)
    ckpts.wait()
    ckpts.close()
    variables, model_cfg = load_weights(str(tmp_path))
    assert model_cfg is None and list(variables) == ["params"]
    np.testing.assert_array_equal(variables["params"]["embed"]["kernel"], np.ones((3, 2)))
    variables, _ = load_weights(str(tmp_path), use_ema=True)
    np.testing.assert_array_equal(variables["params"]["embed"]["kernel"], np.full((3, 2), 2.0))
    # A run without an EMA refuses a request for one (it used to return the raw weights).
    ckpts = RunCheckpoints(str(tmp_path / "plain" / "checkpoints"), every_step)
    ckpts.save(1, {"step": jnp.int32(1), "params": params, "batch_stats": {}, "opt_state": {},
                   "ema": {}}, 1)
    ckpts.wait()
    ckpts.close()
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_weights(str(tmp_path / "plain"), use_ema=True)


COLLECTIVES_SCRIPT = """
import re
import jax, jax.numpy as jnp, optax
from test_train_steps import TinyVideoNet, config
from tadax.train import sharding, state as state_lib, steps
for mix in (0.0, 0.8):
    cfg = config(accum=2, mixup=mix, cutmix=mix)
    model, tx = TinyVideoNet(), optax.adamw(1e-2)
    mesh = sharding.make_mesh(cfg.mesh)
    abstract, shard = state_lib.train_state_spec(model, tx, cfg, mesh)
    step = steps.make_train_step(model, tx, lambda s: jnp.float32(1e-2), cfg, mesh, shard)
    spec = sharding.batch_sharding(mesh)
    batch = {"video": jax.ShapeDtypeStruct((16, 2, 4, 4, 3), jnp.float32, sharding=spec),
             "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=spec)}
    hlo = step.lower(abstract, batch).compile().as_text()
    print(mix, sorted(re.findall(r"= .*? (all-reduce|all-gather|collective-permute|all-to-all|"
                                 r"reduce-scatter)(?:-start)?\\(", hlo)))
"""


def test_mixing_adds_no_communication():
    """On 4 devices with 2 micro-batches, the compiled step with mixup and cutmix has exactly
    the collectives of the plain step: each device mixes its own clips with replicated draws."""
    import subprocess
    import sys

    from conftest import REPO_ROOT, xla_flags
    env = dict(os.environ, XLA_FLAGS=xla_flags(4),
               JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}")
    out = subprocess.run([sys.executable, "-c", COLLECTIVES_SCRIPT], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    plain, mixed = out.stdout.strip().splitlines()[-2:]
    assert plain.startswith("0.0 ") and mixed.startswith("0.8 ")
    assert "all-reduce" in plain and mixed[4:] == plain[4:], out.stdout
