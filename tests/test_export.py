"""Serving exports (`python -m tadax.convert export --format jax_export|saved_model`).

Each artefact is reloaded the way a server would (jax.export.deserialize,
tf.saved_model.load) and must give the Flax model's logits at two batch
sizes, from one artefact (symbolic batch dimension).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax import checkpoint_io, convert
from tadax.models import build_model, default_model_config

BATCHES = (1, 3)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A quick-start-size TAdaFormer with every parameter random (no zero branch) on disk."""
    cfg = default_model_config("tadaformer_tiny", num_classes=5)
    model = build_model(cfg)
    video = jnp.zeros((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3))
    variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), video))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda x: (x + 0.05 * rng.normal(size=x.shape)).astype(x.dtype), variables)
    directory = tmp_path_factory.mktemp("export") / "tiny"
    checkpoint_io.save_variables(str(directory), variables, cfg)
    videos = {b: np.asarray(jax.random.normal(jax.random.PRNGKey(b), (b,) + video.shape[1:]))
              for b in BATCHES}
    want = {b: np.asarray(jax.jit(model.apply)(variables, v)) for b, v in videos.items()}
    return directory, videos, want


def test_jax_export_round_trip(converted, tmp_path, capsys):
    directory, videos, want = converted
    out = tmp_path / "tiny.jax_export"
    assert convert.main(["export", "--format", "jax_export", "--input", str(directory),
                         "--output", str(out)]) == 0
    assert "any B" in capsys.readouterr().out
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
    assert str(exported.in_avals[0].shape[0]) == "b"
    for b, video in videos.items():
        np.testing.assert_allclose(exported.call(video), want[b], atol=1e-5, rtol=0)
    # An existing output is kept unless --overwrite.
    assert convert.main(["export", "--format", "jax_export", "--input", str(directory),
                         "--output", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


def test_saved_model_round_trip(converted, tmp_path):
    tf = pytest.importorskip("tensorflow")
    directory, videos, want = converted
    out = tmp_path / "saved_model"
    assert convert.main(["export", "--format", "saved_model", "--input", str(directory),
                         "--output", str(out), "--platforms", "cpu"]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    for b, video in videos.items():
        got = serve(video=tf.constant(video))["logits"].numpy()
        np.testing.assert_allclose(got, want[b], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_training_run_exports_with_its_config(converted, tmp_path, scan_layers):
    """A run directory (checkpoints/<step>/state + config.json from train.py) exports too,
    also one trained with `scan_layers` (stacked state), to serving and to the original,
    with XLA's attention when the run used cuDNN's (the artefacts run on every platform)."""
    import ml_collections
    from tadax.models import layout
    from tadax.train.checkpointing import RunCheckpoints
    directory, videos, want = converted
    variables, cfg = checkpoint_io.load_variables(str(directory))
    cfg.scan_layers = scan_layers
    run = tmp_path / "run"
    checkpoints = RunCheckpoints(str(run / "checkpoints"), ml_collections.ConfigDict(
        dict(keep=1, keep_best=0, best_metric="val_loss", every_steps=0, every_secs=0)))
    checkpoints.save(7, dict(layout.to_layout(variables, scan_layers), step=np.int32(7)),
                     data_step=7)
    checkpoints.wait()
    checkpoints.close()
    (run / "config.json").write_text(ml_collections.ConfigDict(
        {"model": dict(cfg.to_dict(), attention_impl="cudnn")}).to_json_best_effort())
    out = tmp_path / "run.jax_export"
    assert convert.main(["export", "--format", "jax_export", "--platforms", "cpu",
                         "--input", str(run), "--output", str(out)]) == 0
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    np.testing.assert_allclose(exported.call(videos[3]), want[3], atol=1e-5, rtol=0)
    from safetensors.numpy import load_file
    for source, name in ((run, "run.safetensors"), (directory, "dir.safetensors")):
        assert convert.main(["export", "--input", str(source), "--output",
                             str(tmp_path / name)]) == 0
    from_run, from_dir = (load_file(str(tmp_path / n)) for n in ("run.safetensors",
                                                                  "dir.safetensors"))
    assert sorted(from_run) == sorted(from_dir)
    for key, value in from_dir.items():
        np.testing.assert_array_equal(from_run[key], value, err_msg=key)


def test_unknown_platform_is_one_clear_line(converted, tmp_path, capsys):
    directory, _, _ = converted
    assert convert.main(["export", "--format", "jax_export", "--platforms", "cpu,gpu",
                         "--input", str(directory), "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --platforms") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
