"""`python -m tadax.finetune`: your videos -> split -> prepared data -> fine-tune or linear
probe -> report, and its pieces.

End to end: four classes of generated videos that differ only in motion (an object moving
left to right / right to left, growing / shrinking; tadax.prepare.synthetic), ten each.
The checkpoint stands in for a released one: a tiny TAdaFormer trained here for a few
seconds on other generated clips of these motions and saved as a model directory (from
it, a fresh head learns the classes in a few steps; its features tell them apart). The
fine-tune is killed after its first checkpoint and the same command resumes it, then runs
once more on the finished run; the probe (given the same videos as a `--csv`) runs twice
in the same work directory. All of it is made once per test session (conftest.shared_run)
and the pieces are tested in-process on small arrays.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT, shared_run

CLASSES = ("growing", "moving left to right", "moving right to left", "shrinking")
PER_CLASS = 10
VAL_PER_CLASS = 2            # round(0.2 x 10), finetune.val_fraction's default
EPOCHS = 4
# The stand-in checkpoint: the quick start's tiny TAdaFormer, narrower, trained on 512
# generated clips (not the test's videos) for 150 steps of 32.
PRETRAIN_MODEL = dict(width=64, depth=2, num_heads=2, rf_head_dim=16)
PRETRAIN_CLIPS, PRETRAIN_STEPS, PRETRAIN_BATCH = 512, 150, 32


def _start(*args):
    """`python -m tadax.finetune ARGS`, started (its output: `_finish`)."""
    return command_server.popen([sys.executable, "-m", "tadax.finetune", *map(str, args)],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _write_videos(root):
    from tadax.prepare import synthetic

    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            clip = synthetic.class_clip(np.random.default_rng([7, c, i]), name, 16, 32)
            synthetic.write_mp4(str(root / name / f"{i:02d}.mp4"), clip, 8)


def _pretrain(folder):
    """Trains the stand-in checkpoint in this process and saves it as a model directory:
    clips of 16 frames, 8 taken one per segment as the data pipeline takes them, normalised
    with the quick start's mean and std; BatchNorm in training mode, as train.py runs it."""
    import jax
    import jax.numpy as jnp
    import optax

    from configs import quickstart
    from tadax.checkpoint_io import save_variables
    from tadax.models import build_model
    from tadax.prepare import synthetic

    recipe = quickstart.get_config()
    cfg = recipe.model
    cfg.update(PRETRAIN_MODEL)
    cfg.num_classes = len(CLASSES)
    model = build_model(cfg)
    labels = np.arange(PRETRAIN_CLIPS) % len(CLASSES)
    clips = np.stack([synthetic.class_clip(np.random.default_rng([1, i]), CLASSES[c], 16, 32)
                      for i, c in enumerate(labels)])
    clips = ((clips - 255 * np.float32(recipe.data.mean)) / (255 * np.float32(recipe.data.std))
             ).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, PRETRAIN_STEPS),
                     weight_decay=0.05)

    @jax.jit
    def step(params, stats, opt, video, label, key):
        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, video, train=True,
                                      rngs={"dropout": key, "drop_path": key},
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean(), new
        (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt

    rng, opt = np.random.default_rng(0), tx.init(params)
    for i in range(PRETRAIN_STEPS):
        rows = rng.choice(PRETRAIN_CLIPS, PRETRAIN_BATCH, replace=False)
        frames = 2 * np.arange(8) + rng.integers(0, 2, 8)
        params, stats, opt = step(params, stats, opt, clips[rows][:, frames], labels[rows],
                                  jax.random.key(i))
    save_variables(str(folder), {"params": params, "batch_stats": stats}, cfg)


def _videos():
    return shared_run("finetune_videos", _write_videos)


def _checkpoint():
    return shared_run("finetune_checkpoint", _pretrain)


@pytest.fixture(scope="module")
def finetuned():
    """The work directories and the output of every run. Fine-tune (W): SIGKILLed once a
    checkpoint is committed, the same command again (it resumes) and once more (finished).
    Probe (P, beside it, two at a time on the two cores): the same videos given as a CSV,
    twice."""
    from tadax.train.checkpointing import finished_steps

    videos, checkpoint = _videos(), _checkpoint()

    def build(folder):
        folder.mkdir()
        work, probe_work = folder / "W", folder / "P"
        args = ["--videos", videos, "--checkpoint", checkpoint, "--workdir", work,
                f"--config.train.epochs={EPOCHS}", "--config.optimizer.warmup_epochs=1"]
        lines = [f"{name}/{i:02d}.mp4,{name}" for name in CLASSES for i in range(PER_CLASS)]
        np.random.default_rng(0).shuffle(lines)
        (folder / "videos.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
        probe_args = ["--csv", folder / "videos.csv", "--videos", videos, "--checkpoint",
                      checkpoint, "--workdir", probe_work, "--linear-probe"]
        probe = _start(*probe_args)
        proc = _start(*args)
        deadline = time.time() + 300
        while (time.time() < deadline and proc.poll() is None
               and not finished_steps(work / "finetune" / "checkpoints")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        (folder / "first.txt").write_text(proc.communicate()[0])
        (folder / "killed_at.txt").write_text(
            str(max(finished_steps(work / "finetune" / "checkpoints"))))
        (folder / "split_before.json").write_text(json.dumps({
            name: (work / "split" / name).read_text()
            for name in ("train.csv", "val.csv", "classes.txt")}))
        second = _start(*args)
        _finish(probe, folder / "probe_first.txt")
        _finish(second, folder / "second.txt")
        (folder / "metrics_after_second.jsonl").write_bytes(
            (work / "finetune" / "metrics.jsonl").read_bytes())
        third, probe_again = _start(*args), _start(*probe_args)
        _finish(probe_again, folder / "probe_second.txt")
        _finish(third, folder / "third.txt")

    folder = shared_run("finetune_runs", build)
    out = {name: (folder / f"{name}.txt").read_text()
           for name in ("first", "second", "third", "probe_first", "probe_second")}
    return dict(out, W=folder / "W", P=folder / "P", videos=videos, killed_at=int(
        (folder / "killed_at.txt").read_text()),
        split_before=json.loads((folder / "split_before.json").read_text()),
        metrics_after_second=(folder / "metrics_after_second.jsonl").read_text())


def _finish(proc, output):
    """Waits for `proc` (`_start`), writes its output to `output`; fails on an error."""
    out, _ = proc.communicate(timeout=600)
    output.write_text(out)
    assert proc.returncode == 0, out[-3000:]
    return proc


def _check_report(folder):
    """Well above chance (25%), every prediction's label the folder its file is in, the
    report naming every class with its counts and accuracy, the confusion matrix drawn."""
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert metrics["top1"] >= 75.0, metrics
    assert metrics["num_videos"] == len(CLASSES) * VAL_PER_CLASS
    rows = [json.loads(line) for line in
            (folder / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["filename"].split("/")[0] for r in rows) == sorted(CLASSES * VAL_PER_CLASS)
    for r in rows:
        assert r["label_name"] == r["filename"].split("/")[0] == CLASSES[r["label"]], r
    report = (folder / "report.md").read_text()
    for name, accuracy in zip(CLASSES, metrics["per_class_accuracy"]):
        assert (f"| {name} | {PER_CLASS - VAL_PER_CLASS} | {VAL_PER_CLASS} | {accuracy:.1f} |"
                in report), report
    assert f"top-1 {metrics['top1']:.2f}%" in report
    assert (folder / "eval" / "confusion.png").stat().st_size > 5_000


def test_finetune_learns_your_classes_and_reports_them_by_name(finetuned):
    """Catches: labels shuffled against the videos (in the split CSVs, the preparation's
    class list or the report), a head that is not re-learnt (4 classes against the
    checkpoint's 8: refused), a backbone not taken from the checkpoint (chance after 32
    steps), a report without class names, the preset's choices not printed."""
    _check_report(finetuned["W"] / "finetune")
    out = finetuned["first"]
    for field in ("init.fresh = ^head/", "optimizer.base_lr = 0.0001",
                  "train.global_batch_size = 4", "eval.every_steps = 8",
                  "model.dtype / model.remat / train.grad_accum_steps = float32 / none / 1"):
        assert f"  {field}" in out, out
    assert re.search(r"\d+\.\d+video/s", out), out      # the preparation's progress
    assert re.search(r"step \d+/32 .* clips/s/device ETA", finetuned["second"])
    config = json.loads((finetuned["W"] / "finetune" / "config.json").read_text())
    assert config["init"]["fresh"] == "^head/" and config["model"]["num_classes"] == 4
    assert config["init"]["checkpoint"] == str(_checkpoint())


def test_the_same_command_resumes_a_killed_fine_tune_and_keeps_a_finished_one(finetuned):
    """Catches: a rerun that starts training again from the checkpoint, re-splits or
    re-encodes the videos, or picks its settings anew; a rerun of a finished run that
    trains or evaluates again."""
    second = finetuned["second"]
    total = EPOCHS * (PER_CLASS - VAL_PER_CLASS) * len(CLASSES) // 4
    assert 0 < finetuned["killed_at"] < total
    assert f"resuming at step {finetuned['killed_at']}" in second, second
    assert "initialised from" not in second
    assert "resuming with the run's saved config" in second
    steps = [json.loads(line)["step"] for line in finetuned["metrics_after_second"].splitlines()
             if "train/loss" in line]
    assert steps[-1] == total and steps == sorted(set(steps)), steps
    assert "train: 32 videos written in 1 shards (1 were already complete)" in second
    for name, text in finetuned["split_before"].items():
        assert (finetuned["W"] / "split" / name).read_text() == text
    third = finetuned["third"]
    assert f"has finished its {total} steps and its evaluation" in third, third
    assert "val (multi-view)" not in third and "resuming at step" not in third
    assert ((finetuned["W"] / "finetune" / "metrics.jsonl").read_text()
            == finetuned["metrics_after_second"])


def test_linear_probe_learns_your_classes_from_a_csv_and_reports_them(finetuned):
    """Catches: a probe trained on other labels than its features' videos (a mis-ordered
    concatenation of feature shards), val features used to train or choose it, a CSV whose
    labels or paths are read in the wrong columns (the split would differ from the one the
    class folders gave, and be refused)."""
    _check_report(finetuned["P"] / "linear_probe")
    for name, text in finetuned["split_before"].items():   # the folders' split
        assert (finetuned["P"] / "split" / name).read_text() == text
    out = finetuned["probe_first"]
    assert re.search(r"features/train: 0 of this host's 1 shards already written; "
                     r"32 videos x 2 views", out), out
    assert "videos/s" in out and "ETA" in out
    probe = np.load(finetuned["P"] / "linear_probe" / "classifier.npz")
    assert probe["kernel"].shape == (PRETRAIN_MODEL["width"], len(CLASSES))


def test_a_probe_rerun_computes_nothing_again(finetuned):
    """Catches: features extracted again, or the classifier retrained, on a rerun."""
    second = finetuned["probe_second"]
    for split in ("train", "val"):
        assert f"features/{split}: 1 of this host's 1 shards already written; 0 videos" in second
    assert "trained by an earlier run" in second and "L-BFGS" not in second


def test_linear_probe_model_is_the_backbone_with_the_probe_as_head(finetuned):
    """Catches: a transposed or misplaced head in the saved model (eval.py --checkpoint
    W/linear_probe/model would then classify with something else than the probe), or a
    backbone other than the checkpoint's."""
    import jax

    from tadax.train.checkpointing import load_weights

    probe = np.load(finetuned["P"] / "linear_probe" / "classifier.npz")
    model, cfg = load_weights(str(finetuned["P"] / "linear_probe" / "model"))
    original, _ = load_weights(str(_checkpoint()))
    np.testing.assert_array_equal(model["params"]["head"]["out"]["kernel"], probe["kernel"])
    np.testing.assert_array_equal(model["params"]["head"]["out"]["bias"], probe["bias"])
    assert cfg.num_classes == len(CLASSES)
    leaves = jax.tree_util.tree_leaves_with_path
    for (path, a), (_, b) in zip(leaves(model["params"]["backbone"]),
                                 leaves(original["params"]["backbone"]), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


# ---- the pieces, in-process --------------------------------------------------------------


def test_split_is_stratified_seeded_and_per_class():
    """Catches: a split that is not stratified (one shuffle of all videos), one that changes
    with the run, and one where adding a class moves other classes' videos."""
    from tadax.finetune.videos import stratified_split

    videos = [(f"{c}/{i:02d}.mp4", c) for c, n in (("a", 10), ("b", 5), ("c", 2))
              for i in range(n)]
    train, val = stratified_split(videos, 0.2, seed=3)
    per_class = {c: sum(1 for _, k in val if k == c) for c in "abc"}
    assert per_class == {"a": 2, "b": 1, "c": 1}
    assert sorted(train + val) == sorted(videos) and not set(train) & set(val)
    assert stratified_split(videos, 0.2, seed=3) == (train, val)
    assert stratified_split(videos, 0.2, seed=4)[1] != val
    more = videos + [(f"0/{i}.mp4", "0") for i in range(6)]     # sorted before the others
    assert [v for v in stratified_split(more, 0.2, seed=3)[1] if v[1] != "0"] == val


def test_videos_from_class_folders_and_from_a_csv(tmp_path):
    """Catches: a label taken from the wrong folder, CSV paths resolved against the wrong
    folder, unusable lines that stop the run instead of being listed."""
    from tadax.errors import ConfigError
    from tadax.finetune import videos

    for path in ("up/a.mp4", "up/deeper/b.webm", "down/c.mp4", "down/notes.txt", "loose.mp4"):
        (tmp_path / "v" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "v" / path).write_bytes(b"x")
    listing = videos.from_folders(str(tmp_path / "v"))
    assert listing.videos == (("down/c.mp4", "down"), ("up/a.mp4", "up"),
                              ("up/deeper/b.webm", "up"))
    assert listing.classes == ("down", "up")
    assert [r for _, r in listing.skipped] == ["not in a class folder"]
    (tmp_path / "list.csv").write_text("path,label\nv/up/a.mp4,10\nv/down/c.mp4,2\n"
                                       "missing.mp4,2\nno label\n")
    listing = videos.from_csv(str(tmp_path / "list.csv"))
    assert listing.videos == (("v/down/c.mp4", "2"), ("v/up/a.mp4", "10"))
    assert listing.classes == ("2", "10")    # integer labels in numeric order
    assert [why.split(":")[0] for _, why in listing.skipped] == ["video file not found",
                                                                "malformed line"]
    with pytest.raises(ConfigError, match="'up' has 1"):
        videos.stratified_split([("a", "up"), ("b", "down"), ("c", "down")], 0.2, 0)
    with pytest.raises(ConfigError, match="not a folder"):
        videos.from_folders(str(tmp_path / "nowhere"))


def test_a_rerun_with_other_videos_is_refused_naming_them(tmp_path):
    """Catches: a rerun that silently re-splits (the run's train and val sets would mix)."""
    from tadax.errors import ConfigError
    from tadax.finetune import videos

    listing = videos.Listing("/v", tuple((f"{c}/{i}.mp4", c) for c in "ab" for i in range(4)),
                             ("a", "b"), ())
    first = videos.record_split(tmp_path, listing, 0.25, 0)
    assert videos.record_split(tmp_path, listing, 0.25, 0) == first
    grown = videos.Listing("/v", listing.videos + (("a/9.mp4", "a"),), ("a", "b"), ())
    with pytest.raises(ConfigError, match=r"train.csv: 1 line\(s\) added \(a/9.mp4,a\)"):
        videos.record_split(tmp_path, grown, 0.25, 0)


def test_probe_solution_is_the_optimum_of_its_objective():
    """The fitted classifier must satisfy the optimality condition of L2-regularised
    softmax regression, computed here in float64 from its definition: mean (p - y) x + l2 W
    = 0 and mean (p - y) = 0 over the rows it was given. Catches: a missing or doubled L2
    term, a wrong gradient, stopping early, rows left out that still count (the weights),
    and a standardisation folded back wrongly (raw-feature logits must equal those of the
    standardised features with the classifier fitted on them)."""
    from tadax.finetune import linear_probe

    rng = np.random.default_rng(0)
    n, v, d, c, l2 = 150, 2, 6, 4, 1e-2
    labels = rng.integers(0, c, n)
    features = (rng.normal(size=(n, v, d)) + 2.0 * np.eye(c, d)[labels][:, None]) \
        * [0.01, 1, 100, 1, 1, 3] + 50
    used = np.arange(n) % 5 != 0
    kernel, bias, _ = linear_probe._fit_raw(features, labels, used, c, l2, 500, 1e-6)

    flat, rows = features.reshape(n * v, d), np.repeat(used, v)
    mean, std = flat[rows].mean(0), flat[rows].std(0)
    z, y = ((flat - mean) / std)[rows], np.repeat(labels, v)[rows]
    # the same classifier on the standardised features
    std_kernel, std_bias = kernel * std[:, None], bias + mean @ kernel
    residual = linear_probe.view_probs(z, std_kernel, std_bias) - np.eye(c)[y]
    assert np.abs(z.T @ residual / len(z) + l2 * std_kernel).max() < 1e-5
    assert np.abs(residual.mean(0)).max() < 1e-5


def test_probe_l2_is_chosen_by_cross_validation_on_train_videos_only():
    """Catches: folds not balanced per class (a class missing from a fold's training
    part), a grid whose best value is not the one the classifier is fitted with."""
    from tadax.finetune import linear_probe

    labels = np.repeat(np.arange(3), 8)
    folds = linear_probe.folds_of(labels, 3, seed=0)
    for c in range(3):
        assert sorted(np.bincount(folds[labels == c], minlength=3)) == [2, 3, 3]
    rng = np.random.default_rng(1)
    features = rng.normal(size=(24, 4, 5)) + 1.5 * np.eye(3, 5)[labels][:, None]
    out = linear_probe.train(features, labels, 3, [1e-3, 1e-1, 10.0], 3, 200, 1e-6,
                             log=lambda _: None)
    best = out["cv_l2"][int(np.argmax(out["cv_top1"] + 1e-9 * out["cv_l2"]))]
    assert out["l2"] == best and out["cv_top1"].shape == (3,)
    kernel, bias, _ = linear_probe._fit_raw(features, labels, np.ones(24, bool), 3, best, 200,
                                            1e-6)
    np.testing.assert_allclose(out["kernel"], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["bias"], bias, rtol=1e-5, atol=1e-6)


def _fake_peaks(table, devices=1):
    """An estimate from a table {(dtype, remat): (fixed, per clip)} bytes: the clips of a
    device's micro-batch."""
    def estimate(config):
        fixed, per_clip = table[(config.model.dtype, config.model.remat)]
        batch = config.train.global_batch_size // devices // config.train.grad_accum_steps
        return fixed + per_clip * batch
    return estimate


def _plan_config(batch):
    return ml_collections.ConfigDict(dict(
        model=dict(dtype="float32", remat="none"),
        train=dict(global_batch_size=batch, grad_accum_steps=1)))


def test_memory_plan_takes_the_fastest_setting_that_fits():
    """Catches: remat or bf16 where float32 fits, a ladder in the wrong order, an
    accumulation that does not divide the batch or that leaves micro-batches too large,
    and settings given on the command line being overridden."""
    from tadax.errors import ConfigError
    from tadax.finetune import memory_plan

    table = {("float32", "none"): (10, 10), ("float32", "dots"): (10, 5),
             ("float32", "full"): (10, 3), ("bfloat16", "none"): (6, 6),
             ("bfloat16", "dots"): (6, 3), ("bfloat16", "full"): (6, 2)}
    estimate = _fake_peaks(table)
    cfg = _plan_config(12)

    def chosen(budget, **given):
        p = memory_plan.plan(cfg, budget, devices=1, estimate=estimate, **given)
        return p.dtype, p.remat, p.grad_accum_steps

    # peaks at 12 clips: float32 130; bfloat16 78, with remat dots 42, full 30
    assert chosen(130) == ("float32", "none", 1)
    assert chosen(129) == ("bfloat16", "none", 1)
    assert chosen(50) == ("bfloat16", "dots", 1)
    assert chosen(30) == ("bfloat16", "full", 1)
    assert chosen(29) == ("bfloat16", "full", 2)     # 6 + 2 x 6 = 18
    assert chosen(14) == ("bfloat16", "full", 3)     # 6 + 2 x 4 = 14
    assert chosen(9) == ("bfloat16", "full", 12)     # one clip at a time: 8
    with pytest.raises(ConfigError, match="does not fit the device"):
        chosen(7)
    assert chosen(30, dtype="float32") == ("float32", "full", 2)   # 46 at 12; 28 at 6
    assert chosen(130, remat="full") == ("float32", "full", 1)
    assert chosen(30, remat="none") == ("bfloat16", "none", 3)     # 6 + 6 x 4 = 30
    with pytest.raises(ConfigError, match="does not fit the device"):
        chosen(29, grad_accum_steps=1)
    # 4 clips per device: one at a time fits (8), but mixup needs 2 per device (10)
    plan = memory_plan.plan(_plan_config(8), 9, devices=2, estimate=_fake_peaks(table, 2))
    assert (plan.dtype, plan.remat, plan.grad_accum_steps) == ("bfloat16", "full", 4)
    with pytest.raises(ConfigError, match="does not fit the device"):
        memory_plan.plan(_plan_config(8), 9, devices=2, min_micro_batch=2,
                         estimate=_fake_peaks(table, 2))


def test_batch_and_validation_interval_fit_the_data():
    """Catches: a batch that leaves fewer than the wanted steps per epoch, exceeds the
    recipe's, or is no multiple of the device count; validations more often than once per
    epoch; fields given on the command line overwritten."""
    from configs import finetune
    from tadax.finetune import preset

    assert preset.global_batch(1000, 256, 8, 8) == 64     # 1000 / 8 = 125 -> 64
    assert preset.global_batch(1000, 32, 8, 8) == 32
    assert preset.global_batch(30, 256, 8, 8) == 8        # 2 clips, but one per device
    assert preset.global_batch(48, 256, 6, 8) == 6        # 4 -> a multiple of 6
    assert preset.global_batch(100, 256, 6, 2) == 30      # 32 -> 30
    assert preset.validation_interval(320, 4, 20, 10) == 160
    assert preset.validation_interval(320, 4, 3, 10) == 80
    config = finetune.get_config()
    config.train.global_batch_size, config.eval.every_steps = 16, 7
    notes = preset.fill_in(config, num_train=100, num_classes=5, devices=1,
                           given={"train.global_batch_size", "eval.every_steps", "model.dtype",
                                  "model.remat", "train.grad_accum_steps"},
                           estimate=lambda c: pytest.fail("nothing to estimate"))
    assert (config.train.global_batch_size, config.eval.every_steps) == (16, 7)
    assert config.model.num_classes == config.data.num_classes == 5
    assert [n[2] for n in notes if n[0] != "model.num_classes"] == ["given"] * 3


def _converted(monkeypatch, arch, num_classes, frames):
    """configs/finetune.py's preset for a converted `arch` model (its directory faked)."""
    from configs import finetune
    from tadax import checkpoint_io
    from tadax.models import default_model_config

    model = default_model_config(arch, num_classes=num_classes, num_frames=frames)
    monkeypatch.setattr(checkpoint_io, "is_model_dir", lambda path: True)
    monkeypatch.setattr(checkpoint_io, "read_model_config", lambda path: model)
    return finetune.preset("/ckpt/x")


def test_preset_adapts_the_checkpoints_own_recipe(monkeypatch):
    """Catches: the head not re-learnt (init.fresh), the learning rate not lowered, the
    recipe of another dataset (an SSv2 model evaluated with Kinetics views), SSv2's flip
    left on (it mirrors left/right motions without swapping your labels), a clip length or
    frame size other than the model's."""
    from configs import tadaconvnextv2_tiny_ssv2, tadaformer_b16

    config, notes = _converted(monkeypatch, "tadaconvnextv2_tiny", 174, 32)
    recipe = tadaconvnextv2_tiny_ssv2.get_config("frames=32")
    assert config.init.fresh == "^head/" and config.init.checkpoint == "/ckpt/x"
    assert config.optimizer.base_lr == pytest.approx(recipe.optimizer.base_lr / 10)
    assert config.optimizer.lr_mults == recipe.optimizer.lr_mults
    assert (config.data.num_clips, config.data.num_crops) == (2, 3)
    assert config.data.flip is False and config.data.randaugment == recipe.data.randaugment
    assert config.data.num_frames == config.model.num_frames == 32
    assert config.model.drop_path_rate == recipe.model.drop_path_rate
    assert dict((n[0], n[1]) for n in notes)["data.flip"].startswith("off")

    config, _ = _converted(monkeypatch, "tadaformer_b16", 400, 16)
    recipe = tadaformer_b16.get_config()
    assert config.data.flip is True and (config.data.num_clips, config.data.num_crops) == (4, 3)
    assert config.optimizer.base_lr == pytest.approx(recipe.optimizer.base_lr / 10)
    assert config.optimizer.layer_decay.rate == 0.7
    assert config.data.train_crop_size == config.data.test_crop_size == 224


def test_preset_of_a_run_keeps_a_fine_tunes_rate():
    """A run's own config is its recipe; a run that was itself a fine-tune keeps its rate
    (catches a rate divided again at every fine-tune of a fine-tune)."""
    from configs import finetune
    from tadax.train.run_config import write_run_config

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        config, _ = finetune.preset()
        config.optimizer.base_lr = 3e-4
        write_run_config(config, tmp)
        again, _ = finetune.preset(tmp)
    assert again.optimizer.base_lr == pytest.approx(3e-4)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    """The real command: a class with a single video ends in one line naming it, exit 1,
    no traceback, and no work directory."""
    from configs import quickstart
    from tadax.checkpoint_io import save_variables
    from tadax.models import build_model
    from test_cli_errors import assert_one_line_error, run
    from test_features import random_variables

    model_cfg = quickstart.get_config().model
    save_variables(str(tmp_path / "ckpt"), random_variables(build_model(model_cfg), model_cfg),
                   model_cfg)
    for name, count in (("up", 3), ("down", 1)):
        (tmp_path / "v" / name).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "v" / name / f"{i}.mp4").write_bytes(b"x")
    code, out = run("-m", "tadax.finetune", "--videos", tmp_path / "v", "--checkpoint",
                    tmp_path / "ckpt", "--workdir", tmp_path / "W")
    assert_one_line_error(code, out, "every class needs at least 2 videos", "'down' has 1")
    assert not (tmp_path / "W").exists()
