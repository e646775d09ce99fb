"""The importer's contract: layouts accepted, strictness, no overwrite, round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixtures_dir, require
from tadax import checkpoint_io, convert, torch_reader
from tadax.models import build_model, default_model_config
from tadax.weights import mapping, upstream

torch = pytest.importorskip("torch")

TADAFORMER = "tadaformer_tiny_k400"
CONVNEXT = "tadaconvnextv2_tiny_k400"
# What the weights cannot tell: the fixture ConvNeXt's routing head width.
EXTRA = {TADAFORMER: [], CONVNEXT: ["--set", "rf_head_dim=24"]}


def _state_dict(name):
    path = require(fixtures_dir() / f"{name}.pyth", "the reference fixtures")
    return torch_reader.load_torch_file(path)["model_state"]


def _to_torch(obj):
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    return torch.from_numpy(np.ascontiguousarray(obj)) if isinstance(obj, np.ndarray) else obj


def _save(obj, path):
    torch.save(_to_torch(obj), path)
    return str(path)


def _convert(*args):
    return convert.main([str(a) for a in args])


def _params(out):
    return mapping.flatten(checkpoint_io.load_variables(str(out))[0])


def test_ema_state_module_prefix_and_bare_state_dict(tmp_path):
    sd = _state_dict(TADAFORMER)
    ema = {k: v + 1.0 if v.dtype == np.float32 else v for k, v in sd.items()}
    prefixed = _save({"model_state": {f"module.{k}": v for k, v in sd.items()},
                      "model_ema_state": {f"module.{k}": v for k, v in ema.items()}},
                     tmp_path / "ddp.pyth")
    bare = _save(sd, tmp_path / "bare.pth")

    assert _convert("zoo", "--input", prefixed, "--output", tmp_path / "plain") == 0
    assert _convert("zoo", "--input", prefixed, "--output", tmp_path / "ema", "--ema") == 0
    assert _convert("zoo", "--input", bare, "--output", tmp_path / "bare") == 0
    plain, from_ema, from_bare = (_params(tmp_path / d) for d in ("plain", "ema", "bare"))
    key = ("params", "head", "out", "bias")
    np.testing.assert_array_equal(plain[key], sd["head.out.bias"])
    np.testing.assert_array_equal(from_ema[key], sd["head.out.bias"] + 1.0)
    assert all(np.array_equal(plain[k], from_bare[k]) for k in plain)
    # A file without an EMA state refuses --ema with a clear message.
    assert _convert("zoo", "--input", bare, "--output", tmp_path / "x", "--ema") == 1


def test_mismatches_are_listed_and_nothing_is_written(tmp_path, capsys):
    sd = dict(_state_dict(TADAFORMER))
    sd["backbone.layers.0.surprise.weight"] = np.zeros(3, np.float32)
    del sd["backbone.ln_post.bias"]
    sd["head.out.bias"] = np.zeros(99, np.float32)
    path = _save({"model_state": sd}, tmp_path / "bad.pyth")
    out = tmp_path / "out"
    assert _convert("zoo", "--input", path, "--output", out) == 1
    err = capsys.readouterr().err
    assert "backbone.layers.0.surprise.weight" in err
    assert "params/backbone/ln_post/bias" in err
    assert "head.out.bias" in err and "bad.pyth" in err
    assert not out.exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    path = fixtures_dir() / f"{TADAFORMER}.pyth"
    require(path, "the reference fixtures")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("keep me")
    assert _convert("zoo", "--input", path, "--output", out) == 1
    assert "exists" in capsys.readouterr().err
    assert (out / "precious").read_text() == "keep me"
    assert _convert("zoo", "--input", path, "--output", out, "--overwrite") == 0
    assert not (out / "precious").exists()


def test_unreadable_input_is_a_clear_error(tmp_path, capsys):
    junk = tmp_path / "junk.pyth"
    junk.write_bytes(b"not a checkpoint")
    assert _convert("zoo", "--input", junk, "--output", tmp_path / "out") == 1
    assert "junk.pyth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [TADAFORMER, CONVNEXT])
@pytest.mark.parametrize("suffix", [".pyth", ".safetensors"])
def test_round_trip_back_to_the_original_format(name, suffix, tmp_path):
    sd = _state_dict(name)
    src = fixtures_dir() / f"{name}.pyth"
    assert _convert("zoo", "--input", src, "--output", tmp_path / "flax", *EXTRA[name]) == 0
    exported = tmp_path / f"back{suffix}"
    assert _convert("export", "--input", tmp_path / "flax", "--output", exported) == 0
    if suffix == ".pyth":
        back = {k: v.numpy() for k, v in torch.load(exported, weights_only=True)["model_state"].items()}
    else:
        back = torch_reader.load_safetensors(exported)
    assert set(back) == set(sd)
    for k, v in sd.items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_head_width_the_weights_cannot_tell_is_asked_for(tmp_path, capsys):
    src = require(fixtures_dir() / f"{CONVNEXT}.pyth", "the reference fixtures")
    assert _convert("zoo", "--input", src, "--output", tmp_path / "out") == 1
    assert "--set rf_head_dim=N" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convnext_imagenet_starting_point(tmp_path):
    """An official-layout ConvNeXt file: 2D kernels inflated, head dropped, new parts fresh."""
    zoo = _state_dict(CONVNEXT)
    image = {}
    for k, v in zoo.items():
        k = k[len("backbone."):] if k.startswith("backbone.") else k
        if "dwconv_rf" in k or "norm_avgpool" in k or k.startswith("head."):
            continue
        if k == "downsample_layers.0.0.weight":
            v = v[:, :, 1]
        elif k.endswith(".1.weight") and k.startswith("downsample_layers") and v.ndim == 5:
            v = v[:, :, 0]
        elif k.endswith(("dwconv.weight", "dwconv.bias")):
            v = v[0, 0]
        image[k] = v
    image["head.weight"] = np.zeros((1000, 384), np.float32)
    image["head.bias"] = np.zeros((1000,), np.float32)
    path = _save({"model": image}, tmp_path / "convnext_in1k.pth")
    out = tmp_path / "out"
    assert _convert("convnext", "--input", path, "--output", out, "--arch", "tadaconvnextv2_tiny",
                    "--num-classes", "7", "--set", "depths=(1,1,2,1)",
                    "--set", "dims=(48,96,192,384)", "--set", "rf_head_dim=24") == 0
    got = _params(out)
    stem = got[("params", "backbone", "stem_conv", "kernel")]  # (kt, kh, kw, in, out)
    np.testing.assert_array_equal(stem[1], image["downsample_layers.0.0.weight"].transpose(2, 3, 1, 0))
    assert not stem[0].any() and not stem[2].any()
    block = ("params", "backbone", "stages_2_1")
    np.testing.assert_array_equal(got[block + ("dwconv", "kernel")][..., 0, :],
                                  image["stages.2.1.dwconv.weight"][:, 0].transpose(1, 2, 0))
    assert not got[block + ("dwconv_rf", "b", "kernel")].any()  # identity calibration at start
    assert not got[block + ("norm_avgpool", "scale")].any()
    assert got[("params", "head", "out", "kernel")].shape == (384, 7)


def test_openai_clip_starting_point(tmp_path):
    """A CLIP `visual.*` state dict: resblocks renamed, patch kernel in the centre tap, proj dropped."""
    zoo = _state_dict(TADAFORMER)
    clip = {}
    for k, v in zoo.items():
        if ".tada." in k or k.startswith("head."):
            continue
        k = k.replace("backbone.layers.", "transformer.resblocks.").replace("backbone.", "")
        clip["visual." + k] = (v[:, :, 1] if k == "conv1.weight" else v).astype(np.float16)
    clip["visual.proj"] = np.zeros((512, 256), np.float16)
    path = _save(clip, tmp_path / "clip_visual.pt")
    out = tmp_path / "out"
    assert _convert("clip", "--input", path, "--output", out, "--arch", "tadaformer_b16",
                    "--num-classes", "11", "--set", "width=512", "--set", "depth=1",
                    "--set", "num_heads=8", "--set", "image_size=64") == 0
    got = _params(out)
    ln = got[("params", "backbone", "layers_0", "ln_1", "scale")]
    np.testing.assert_array_equal(ln, zoo["backbone.layers.0.ln_1.weight"].astype(np.float16))
    assert ln.dtype == np.float32
    assert not got[("params", "backbone", "layers_0", "tada", "tada_proj", "kernel")].any()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_settings_file_inheritance_is_resolved(tmp_path):
    """_BASE_RUN under _BASE_MODEL under the file; `./` is the top file's folder; 1e-6 a number."""
    _write(tmp_path / "pool" / "backbone" / "net.yaml",
           "VIDEO:\n  BACKBONE:\n    META_ARCH: ConvNeXt\n    DEPTH: [3, 3, 9, 3]\n"
           "    LARGE_SCALE_INIT_VALUE: 1e-6\n    BRANCH:\n      HEAD_DIM: 48\n      ROUTE_FUNC_R: 2\n"
           "  HEAD:\n    DROPOUT_RATE: 0.0\n")
    _write(tmp_path / "pool" / "run.yaml", "_BASE_: ../common/base.yaml\n"
           "VIDEO:\n  BACKBONE:\n    BRANCH:\n      HEAD_DIM: 32\n  HEAD:\n    DROPOUT_RATE: 0.3\n")
    _write(tmp_path / "common" / "base.yaml", "DATA:\n  NUM_INPUT_FRAMES: 8\n  TEST_SCALE: 256\n")
    _write(tmp_path / "projects" / "siblings.yaml", "DATA:\n  NUM_INPUT_FRAMES: 32\n")
    top = _write(tmp_path / "projects" / "mine.yaml",
                 "_BASE_RUN: ../pool/run.yaml\n_BASE_MODEL: ../pool/backbone/net.yaml\n"
                 "VIDEO:\n  HEAD:\n    NUM_CLASSES: 7\n")
    got = upstream.load_upstream_settings(str(top))
    assert got["VIDEO.BACKBONE.DEPTH"] == [3, 3, 9, 3]               # from the model file
    assert got["VIDEO.BACKBONE.BRANCH.HEAD_DIM"] == 32              # the run file beats the model file
    assert got["VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_R"] == 2           # blocks merge key by key
    assert got["VIDEO.HEAD.DROPOUT_RATE"] == 0.3 and got["VIDEO.HEAD.NUM_CLASSES"] == 7
    assert got["DATA.NUM_INPUT_FRAMES"] == 8                        # the run file's own _BASE_
    assert got["VIDEO.BACKBONE.LARGE_SCALE_INIT_VALUE"] == 1e-6
    assert not any(k.startswith("_BASE") for k in got)
    dotted = _write(tmp_path / "projects" / "dotted.yaml", "_BASE_: ./siblings.yaml\n")
    assert upstream.load_upstream_settings(str(dotted))["DATA.NUM_INPUT_FRAMES"] == 32
    loop = _write(tmp_path / "loop.yaml", "_BASE_: loop.yaml\n")
    with pytest.raises(upstream.UpstreamConfigError, match="cycle"):
        upstream.load_upstream_settings(str(loop))


FOUR_HEADS = dict(width=512, depth=1, num_heads=4, patch_size=16, image_size=32, num_frames=4,
                  rf_head_dim=64, num_classes=3)


def test_heads_that_no_weight_shows_come_from_the_settings_file(tmp_path, capsys):
    """Width 512 with 4 heads (not 512 // 64 = 8): said without the YAML, exact with it."""
    from safetensors.numpy import save_file
    cfg = default_model_config("tadaformer_b16", **FOUR_HEADS)
    model = build_model(cfg)
    video = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), video)
    weights = tmp_path / "four_heads.safetensors"
    save_file({k: np.ascontiguousarray(v)
               for k, v in mapping.flax_to_torch(jax.device_get(variables)).items()}, str(weights))
    want = jax.jit(model.apply)(variables, video)

    def logits(out):
        loaded, saved = checkpoint_io.load_variables(str(out))
        return saved, jax.jit(build_model(saved).apply)(loaded, video)

    assert _convert("zoo", "--input", weights, "--output", tmp_path / "guessed") == 0
    notes = capsys.readouterr().err.splitlines()
    heads = [line for line in notes if line.startswith("note: num_heads=8 ")]
    assert len(heads) == 1 and "--set num_heads=" in heads[0] and "VIDEO.BACKBONE.NUM_HEADS" in heads[0]
    assert any(line.startswith("note: tubelet_stride=2 ") for line in notes)
    saved, guessed = logits(tmp_path / "guessed")
    assert saved.num_heads == 8 and float(jnp.abs(guessed - want).max()) > 1e-3

    _write(tmp_path / "pool" / "narrow.yaml",
           "VIDEO:\n  BACKBONE:\n    META_ARCH: VisionTransformer\n    NUM_FEATURES: 512\n"
           "    DEPTH: 1\n    NUM_HEADS: 8\n    PATCH_SIZE: 16\n    INPUT_RES: 32\n"
           "    TUBLET_STRIDE: 2\n    BRANCH:\n      HEAD_DIM: 64\n")
    settings = _write(tmp_path / "run" / "mine.yaml",
                      "_BASE_MODEL: ../pool/narrow.yaml\nDATA:\n  NUM_INPUT_FRAMES: 4\n"
                      "VIDEO:\n  BACKBONE:\n    NUM_HEADS: 4\n    DROP_PATH: 0.1\n"
                      "  HEAD:\n    NUM_CLASSES: 3\n    DROPOUT_RATE: 0.5\n")
    assert _convert("zoo", "--input", weights, "--output", tmp_path / "told",
                    "--upstream-config", settings) == 0
    assert "note:" not in capsys.readouterr().err
    saved, told = logits(tmp_path / "told")
    assert saved.num_heads == 4
    np.testing.assert_allclose(told, want, atol=1e-6, rtol=0)

    # Settings that contradict the weights are refused, naming the field.
    wrong = _write(tmp_path / "run" / "wrong.yaml", "_BASE_: mine.yaml\nVIDEO:\n  BACKBONE:\n    DEPTH: 2\n")
    assert _convert("zoo", "--input", weights, "--output", tmp_path / "x",
                    "--upstream-config", wrong) == 1
    assert "depth: weights 1, given 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_settings_file_is_one_clear_line(tmp_path, capsys):
    weights = tmp_path / "any.pyth"
    for text, said in [(None, "no such settings file"), ("VIDEO: [1, 2\n", "not valid YAML"),
                       ("VIDEO:\n  BACKBONE:\n    META_ARCH: SlowFast\n", "'SlowFast'")]:
        settings = tmp_path / "settings.yaml"
        if text is not None:
            settings.write_text(text)
        assert _convert("zoo", "--input", weights, "--output", tmp_path / "out",
                        "--upstream-config", settings) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and "settings.yaml" in err, err
        assert len(err.strip().splitlines()) == 1
