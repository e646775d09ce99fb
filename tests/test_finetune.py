"""`python -m tadax.finetune`'s pieces: the videos' listing and stratified split, the
linear probe's solver, the memory plan, the batch and the preset."""

import ml_collections
import numpy as np
import pytest


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
    """Catches: folds that split a video's views (views of a held-out video seen in
    training inflate the score of the weakest regularisation), and a grid whose best
    value is not the one used."""
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
