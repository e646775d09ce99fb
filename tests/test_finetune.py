"""`python -m tadax.finetune`: your videos -> split -> prepared data -> fine-tune or linear
probe -> report, and its pieces.

End to end: four classes of generated videos that differ only in motion (an object moving
left to right / right to left, growing / shrinking; tadax.prepare.synthetic), ten each,
and the quick start's trained run as the checkpoint (conftest's background "quickstart";
its own eight classes include these motions, so a few steps suffice). The fine-tune run is
killed after its first checkpoint and the same command resumes it; the probe is run twice.
Both runs are shared by the session (one per test run, under a file lock) and the
pieces are tested in-process on small arrays.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import filelock
import ml_collections
import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_RUNS, background_run

pytestmark = pytest.mark.background("quickstart")

CLASSES = ("growing", "moving left to right", "moving right to left", "shrinking")
PER_CLASS = 10
EPOCHS = 3


def _command(*args, wait=True):
    proc = subprocess.Popen([sys.executable, "-m", "tadax.finetune", *map(str, args)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _shared(name, build):
    """The folder of `build(folder)`, run once per test run across the test processes."""
    folder = SHARED_RUNS / f"finetune_{name}"
    with filelock.FileLock(f"{folder}.lock"):
        if not (folder / "done").exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / "done").write_text("")
    return folder


def _write_videos(root):
    from tadax.prepare import synthetic

    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            clip = synthetic.class_clip(np.random.default_rng([7, c, i]), name, 16, 32)
            synthetic.write_mp4(str(root / name / f"{i:02d}.mp4"), clip, 8)


def _videos():
    return _shared("videos", _write_videos)


def _checkpoint():
    return background_run("quickstart") / "workdirs" / "quickstart"


@pytest.fixture(scope="module")
def finetuned():
    """W of the fine-tune, and the output of its two runs: the first SIGKILLed once a
    checkpoint is committed, the second the same command."""
    from tadax.train.checkpointing import finished_steps

    videos, checkpoint = _videos(), _checkpoint()

    def build(folder):
        args = ["--videos", videos, "--checkpoint", checkpoint, "--workdir", folder / "W",
                f"--config.train.epochs={EPOCHS}", "--config.optimizer.warmup_epochs=1"]
        proc = _command(*args, wait=False)
        deadline = time.time() + 300
        while (time.time() < deadline and proc.poll() is None
               and not finished_steps(folder / "W" / "finetune" / "checkpoints")):
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        (folder / "first.txt").write_text(proc.communicate()[0])
        (folder / "split_before.json").write_text(json.dumps({
            name: (folder / "W" / "split" / name).read_text()
            for name in ("train.csv", "val.csv", "classes.txt")}))
        code, out = _command(*args)
        (folder / "second.txt").write_text(out)
        assert code == 0, out[-3000:]

    folder = _shared("finetune", build)
    return dict(W=folder / "W", first=(folder / "first.txt").read_text(),
                second=(folder / "second.txt").read_text(), videos=videos,
                split_before=json.loads((folder / "split_before.json").read_text()))


@pytest.fixture(scope="module")
def probed():
    """W of the linear probe and the output of its two runs."""
    videos, checkpoint = _videos(), _checkpoint()

    def build(folder):
        for run in ("first", "second"):
            code, out = _command("--videos", videos, "--checkpoint", checkpoint, "--workdir",
                                 folder / "W", "--linear-probe")
            (folder / f"{run}.txt").write_text(out)
            assert code == 0, out[-3000:]

    folder = _shared("probe", build)
    return dict(W=folder / "W", first=(folder / "first.txt").read_text(),
                second=(folder / "second.txt").read_text(), videos=videos)


def _check_report(folder, videos):
    """Well above chance (25%), every prediction's label the folder its file is in, the
    report naming every class with its accuracy, the confusion matrix drawn."""
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert metrics["top1"] >= 75.0, metrics
    assert metrics["num_videos"] == len(CLASSES) * 2
    rows = [json.loads(line) for line in
            (folder / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["filename"].split("/")[0] for r in rows) == sorted(CLASSES * 2)
    for r in rows:
        assert r["label_name"] == r["filename"].split("/")[0] == CLASSES[r["label"]], r
    report = (folder / "report.md").read_text()
    for name, accuracy in zip(CLASSES, metrics["per_class_accuracy"]):
        assert f"| {name} | 8 | 2 | {accuracy:.1f} |" in report, report
    assert (folder / "eval" / "confusion.png").stat().st_size > 5_000


def test_finetune_learns_your_classes_and_reports_them_by_name(finetuned):
    """Catches: labels shuffled against the videos (in the split CSVs, the preparation's
    class list or the report), a head that is not re-learnt (4 classes against the
    checkpoint's 8: refused), a backbone not taken from the checkpoint (chance after 24
    steps), a report without class names."""
    _check_report(finetuned["W"] / "finetune", finetuned["videos"])
    out = finetuned["first"]
    for field in ("init.fresh", "optimizer.base_lr = 0.0001", "train.global_batch_size = 4",
                  "model.dtype / model.remat / train.grad_accum_steps = float32 / none / 1"):
        assert f"  {field}" in out, out
    config = json.loads((finetuned["W"] / "finetune" / "config.json").read_text())
    assert config["init"]["fresh"] == "^head/" and config["model"]["num_classes"] == 4


def test_the_same_command_resumes_a_killed_fine_tune(finetuned):
    """Catches: a rerun that starts training again from the checkpoint, re-splits or
    re-encodes the videos, or picks its settings anew."""
    second = finetuned["second"]
    match = re.search(r"resuming at step (\d+)", second)
    assert match and "initialised from" not in second, second
    assert "resuming with the run's saved config" in second
    steps = [json.loads(line)["step"] for line in
             (finetuned["W"] / "finetune" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    total = EPOCHS * (PER_CLASS - 2) * len(CLASSES) // 4
    assert steps[-1] == total and steps == sorted(set(steps)), steps
    assert re.search(r"train: 32 videos written in 1 shards \(1 were already complete\)", second)
    for name, text in finetuned["split_before"].items():
        assert (finetuned["W"] / "split" / name).read_text() == text


def test_linear_probe_learns_your_classes_and_reports_them_by_name(probed):
    """Catches what the fine-tune test does, for the probe's own path: features paired
    with the wrong labels, a probe evaluated on the train videos, a report without names."""
    _check_report(probed["W"] / "linear_probe", probed["videos"])
    assert re.search(r"probe.l2` = [0-9.e-]+: the best top-1 of 3-fold", (
        probed["W"] / "linear_probe" / "report.md").read_text())


def test_linear_probe_rerun_computes_nothing_again(probed):
    """Catches: features recomputed, the classifier retrained on a rerun."""
    second = probed["second"]
    for split in ("train", "val"):
        assert f"features/{split}: 1 of this host's 1 shards already written; 0 videos" in second
    assert "trained by an earlier run" in second and "L-BFGS" not in second


def test_linear_probe_model_is_the_backbone_with_the_probe_as_head(probed):
    """Catches: a transposed or misplaced head in the saved model (eval.py --checkpoint
    W/linear_probe/model would then classify with something else than the probe)."""
    from tadax.train.checkpointing import load_weights

    probe = np.load(probed["W"] / "linear_probe" / "classifier.npz")
    model, cfg = load_weights(str(probed["W"] / "linear_probe" / "model"))
    original, _ = load_weights(str(_checkpoint()))
    np.testing.assert_array_equal(model["params"]["head"]["out"]["kernel"], probe["kernel"])
    np.testing.assert_array_equal(model["params"]["head"]["out"]["bias"], probe["bias"])
    assert cfg.num_classes == len(CLASSES)
    np.testing.assert_array_equal(model["params"]["backbone"]["ln_post"]["scale"],
                                  original["params"]["backbone"]["ln_post"]["scale"])


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
    more = videos + [(f"d/{i}.mp4", "d") for i in range(6)]
    assert [v for v in stratified_split(more, 0.2, seed=3)[1] if v[1] != "d"] == val


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
    from test_cli_errors import assert_one_line_error, run

    for name, count in (("up", 3), ("down", 1)):
        (tmp_path / "v" / name).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "v" / name / f"{i}.mp4").write_bytes(b"x")
    code, out = run("-m", "tadax.finetune", "--videos", tmp_path / "v", "--checkpoint",
                    _checkpoint(), "--workdir", tmp_path / "W")
    assert_one_line_error(code, out, "every class needs at least 2 videos", "'down' has 1")
    assert not (tmp_path / "W").exists()
