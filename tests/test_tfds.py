"""TFDS: the builders (Kinetics-400 and SSv2 manual-dir layouts -> tfds datasets, bad input
skipped), and the input pipeline reading what they wrote (`data.tfds_name`) as it reads
the DMVR shards of the same videos."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tadax.data import pipeline
from tadax.data.config import data_config
# tfds_builders registers the builders.
from tadax.prepare import synthetic, tfds_builders  # noqa: F401
from tadax.prepare.encode import EncodeOptions, frame_jpeg
from tadax.data.video import read_video


def _frames_close(stored: np.ndarray, path: str) -> None:
    """The stored frames are the frames of `path`, in order, JPEG-encoded once as preparation
    encodes them (TF and PIL JPEG decoders differ by ~1 grey level, a few by up to 4)."""
    quality = EncodeOptions().jpeg_quality
    jpegs = read_video(path, lambda r, frame: frame_jpeg(r, frame, 0, quality)).frames
    once = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB"))
                     for j in jpegs]).astype(np.float32)
    assert stored.shape == once.shape
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


@pytest.fixture(scope="module")
def k400_prepared(tmp_path_factory):
    """The same generated Kinetics layout prepared twice: by the TFDS builder and by
    `python -m tadax.prepare` (DMVR shards) -> (TFDS data_dir, DMVR folder, raw folder)."""
    from tadax.prepare import cli

    root = tmp_path_factory.mktemp("k400")
    raw = root / "raw"
    synthetic.write_dataset(str(raw), {"train": 8, "validate": 5}, frames=8, size=32, fps=8)
    builder = tfds.builder("kinetics400/native", data_dir=str(root / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    assert cli.main(["kinetics", "--quiet", "--root", str(raw / "videos"), "--out",
                     str(root / "dmvr"), "--shards", "2", "--short-side", "0", "--workers", "1",
                     "--split", f"validation={raw / 'validate.csv'}"]) == 0
    return root / "tfds", root / "dmvr", raw


def _small(**overrides):
    return data_config(**{**dict(dataset="kinetics400", num_classes=len(synthetic.CLASSES),
                                 num_frames=4, train_crop_size=16, test_scale=16,
                                 test_crop_size=16, randaugment="", num_clips=2, num_crops=1,
                                 val_split="validation"), **overrides})


def _unregistered(monkeypatch, name):
    """As in train.py and eval.py, which never import the builders: `name` read from files."""
    from tensorflow_datasets.core import registered
    monkeypatch.delitem(registered._DATASET_REGISTRY, name)


def test_pipeline_reads_what_the_builder_wrote(k400_prepared, monkeypatch):
    """`data.tfds_name` feeds the TFDS builder's records to the training streams and the
    eval views, without the builder's code: training batches come out, the 5 validation
    videos are each seen once over two hosts, with the views and file names the DMVR shards
    of the same videos give."""
    tfds_dir, dmvr_dir, raw = k400_prepared
    _unregistered(monkeypatch, "kinetics400")
    cfg = _small(tfds_name="kinetics400/native", data_dir=str(tfds_dir))
    assert pipeline.num_examples(cfg, "train") == 8 and pipeline.num_examples(cfg, "val") == 5
    assert pipeline.dataset_class_names(cfg) == sorted(synthetic.CLASSES)
    batch = next(pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0,
                                               process_index=1, process_count=2))
    assert batch["video"].shape == (2, 4, 16, 16, 3) and np.isfinite(batch["video"]).all()
    assert set(batch["label"].tolist()) <= set(range(len(synthetic.CLASSES)))

    def views_by_file(c, pc):
        out = {}
        for pi in range(pc):
            for b in pipeline.build_eval_iterator(c, split="val", global_batch_size=4,
                                                  multi_view=True, process_index=pi,
                                                  process_count=pc):
                for i in np.flatnonzero(b["mask"]):
                    key = (b["filename"][i].decode(), int(b["view"][i]))
                    assert key not in out, f"{key} seen twice"
                    out[key] = (b["video"][i], int(b["label"][i]))
        return out

    from_tfds = views_by_file(cfg, 2)
    names = {p.name for p in (raw / "videos" / "validate").iterdir()}
    assert {name for name, _ in from_tfds} == names and len(from_tfds) == 2 * len(names)
    from_dmvr = views_by_file(_small(data_dir=str(dmvr_dir)), 1)
    assert from_tfds.keys() == from_dmvr.keys()
    for key, (video, label) in from_tfds.items():
        np.testing.assert_array_equal(video, from_dmvr[key][0])
        assert label == from_dmvr[key][1]


def test_unknown_tfds_split_or_builder_is_a_clear_error(k400_prepared, tmp_path, monkeypatch):
    tfds_dir, _, _ = k400_prepared
    with pytest.raises(FileNotFoundError, match=r"no split 'val'.*\['train', 'validation'\]"):
        pipeline.num_examples(_small(tfds_name="kinetics400/native", data_dir=str(tfds_dir),
                                     val_split="val"), "val")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pipeline.num_examples(_small(tfds_name="ssv2", data_dir=str(tmp_path)), "train")
    _unregistered(monkeypatch, "ssv2")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pipeline.num_examples(_small(tfds_name="ssv2", data_dir=str(tmp_path)), "train")
