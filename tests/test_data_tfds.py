"""TFDS builders: Kinetics-400 and SSv2 manual-dir layouts -> tfds datasets, bad input skipped."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tadax.data import synthetic, tfds_builders  # noqa: F401  (registers the builders)
from tadax.data.encode import EncodeOptions, jpeg_bytes
from tadax.data.video import decode_video


def _frames_close(stored: np.ndarray, path: str) -> None:
    """The stored frames are the PyAV frames of `path`, in order, JPEG-encoded once at the
    preparation quality (TF and PIL JPEG decoders differ by ~1 grey level, a few by up to 4)."""
    ref = decode_video(path).frames
    assert stored.shape == ref.shape
    once = np.stack([np.asarray(Image.open(io.BytesIO(jpeg_bytes(f, EncodeOptions().jpeg_quality))))
                     for f in ref]).astype(np.float32)
    err = np.abs(stored.astype(np.float32) - once)
    assert err.mean() < 1.5 and err.max() <= 8, (err.mean(), err.max())


def test_kinetics400_builder(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_dataset(str(raw), {"train": 8, "validate": 4}, frames=8, size=32, fps=8)
    (raw / "videos" / "train" / "broken_000000_000001.mp4").write_bytes(b"not a video")
    with open(raw / "train.csv", "a") as f:
        f.write("growing,broken,0,1,train\n"         # corrupt file
                "growing,absent,0,1,train\n")         # missing file
    builder = tfds.builder("kinetics400/native", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    assert builder.info.splits["train"].num_examples == 8
    assert builder.info.splits["validation"].num_examples == 4
    classes = open(os.path.join(builder.data_dir, "classes.txt")).read().split("\n")[:-1]
    assert classes == sorted(synthetic.CLASSES)
    for ex in tfds.as_numpy(builder.as_dataset(split="validation")):
        name = ex["filename"].decode()
        assert classes[ex["label"]] == ex["label_text"].decode()
        assert ex["num_frames"] == 8 and ex["fps"] == pytest.approx(8.0)
        _frames_close(ex["video"], str(raw / "videos" / "validate" / name))


def _write_webm(path: str, clip: np.ndarray, fps: int) -> None:
    """(F, H, W, 3) uint8 -> a VP9 .webm, as SSv2 ships its videos."""
    import av
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.options = {"crf": "4", "b": "0"}
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_ssv2_builder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    templates = ["Moving [something] from left to right", "Pushing [something] so it spins"]
    names = [t.replace("[", "").replace("]", "") for t in templates]
    (raw / "labels.json").write_text(json.dumps({n: str(i) for i, n in enumerate(names)}))
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2)):
        items = []
        for i in range(count):
            vid = f"{split[0]}{i}"
            _write_webm(str(raw / f"{vid}.webm"), synthetic.class_clip(rng, "growing", 6, 32), 12)
            items.append({"id": vid, "template": templates[i % 2], "label": "x",
                          "placeholders": []})
        items.append({"id": "gone", "template": templates[0]})           # missing file
        items.append({"id": f"{split[0]}0", "template": "Unknown [thing]"})  # unknown label
        (raw / f"something-something-v2-{split}.json").write_text(json.dumps(items))
    builder = tfds.builder("ssv2", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    assert builder.info.splits["train"].num_examples == 4
    seen = {}
    for ex in tfds.as_numpy(builder.as_dataset(split="train")):
        seen[ex["filename"].decode()] = int(ex["label"])
        assert names[ex["label"]] == ex["label_text"].decode()
        _frames_close(ex["video"], str(raw / ex["filename"].decode()))
    assert seen == {"t0.webm": 0, "t1.webm": 1, "t2.webm": 0, "t3.webm": 1}


def test_missing_annotations_is_a_clear_error(tmp_path):
    builder = tfds.builder("ssv2", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="labels.json"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
