"""eval.py without --config: a run's saved config comes back whole (a ConvNeXt run's data
settings included); a converted release gets its recipe's preprocessing and views; a
Kinetics-400 model names its classes without --labels."""

import os
import sys

import jax
import numpy as np

from configs import checkpoint as checkpoint_config, tadaconvnextv2_tiny
import command_server
from conftest import REPO_ROOT
from tadax import checkpoint_io
from tadax.prepare import synthetic
from tadax.data.config import CLIP_MEAN, KINETICS_MEAN, KINETICS_STD, released_model_data_config
from tadax.labels import shipped_class_names
from tadax.models import build_model, default_model_config
from tadax.train.run_config import write_run_config
from tadax.train.state import abstract_variables


def test_a_runs_saved_config_reads_back_whole(tmp_path):
    config = tadaconvnextv2_tiny.get_config()
    write_run_config(config, str(tmp_path))
    (tmp_path / "checkpoints" / "100" / "state").mkdir(parents=True)
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "100"):
        back = checkpoint_config.get_config(str(path))
        assert back.to_json() == config.to_json()      # equal up to list vs tuple
    data = back.data
    assert (data.mean, data.std) == (KINETICS_MEAN, KINETICS_STD)
    assert (data.sampling, data.sampling_rate, data.target_fps) == ("interval", 5, 30.0)
    assert (data.num_clips, data.num_crops, data.test_scale, data.test_crop_size) == (4, 3, 256, 256)


def _converted(tmp_path, arch, **overrides):
    """A model directory as `tadax.convert` writes it (random weights)."""
    model_cfg = default_model_config(arch, **overrides)
    shapes = abstract_variables(build_model(model_cfg), model_cfg)
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    path = tmp_path / arch
    checkpoint_io.save_variables(str(path), variables, model_cfg)
    return path


def test_converted_release_gets_its_recipes_protocol(tmp_path):
    path = tmp_path / "convnext"    # only the stored model config matters here
    checkpoint_io.save_variables(str(path), {"params": {"w": np.zeros(1)}},
                                 default_model_config("tadaconvnextv2_tiny"))
    data = checkpoint_config.get_config(str(path)).data
    assert data.dataset == "kinetics400" and data.num_frames == 16
    assert (data.mean, data.std, data.sampling) == (KINETICS_MEAN, KINETICS_STD, "interval")
    assert (data.num_clips, data.num_crops, data.test_scale, data.test_crop_size) == (4, 3, 256, 256)
    cfg = default_model_config("tadaformer_b16", num_classes=174)
    data = released_model_data_config(cfg)
    assert (data.dataset, data.mean, data.sampling) == ("ssv2", CLIP_MEAN, "segment")
    assert (data.num_clips, data.num_crops, data.test_scale, data.test_crop_size) == (2, 3, 224, 224)


def test_video_with_a_converted_k400_model_prints_kinetics_names(tmp_path):
    """`eval.py --video clip.mp4 --checkpoint DIR`, nothing else, on a small 400-class model."""
    path = _converted(tmp_path, "tadaformer_tiny", num_classes=400, num_frames=8,
                         image_size=32)
    video = tmp_path / "clip.mp4"
    synthetic.write_mp4(str(video), np.random.default_rng(0).integers(
        0, 255, (20, 48, 64, 3), np.uint8), fps=10)
    out = command_server.run([sys.executable, str(REPO_ROOT / "eval.py"), f"--video={video}",
                          f"--checkpoint={path}"], cwd=REPO_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-6].endswith(": 12 views")            # Kinetics' 4 clips x 3 crops
    names = set(shipped_class_names("kinetics400"))
    assert len(names) == 400
    assert all(line.split(maxsplit=1)[1] in names for line in lines[-5:])
