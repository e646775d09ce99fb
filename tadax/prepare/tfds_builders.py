"""TFDS builders for Kinetics-400 and Something-Something V2 from manually downloaded files.

They read the same annotation layouts and decode with the same code as
`python -m tadax.prepare` (`tadax.prepare.annotations`, `tadax.prepare.encode`), and store
each video as JPEG frames (`tfds.features.Video`, JPEG-encoded, no re-encode).
Bad videos and bad annotation lines are skipped, never fatal; the generator
logs how many. Usage:

    import tensorflow_datasets as tfds
    import tadax.prepare.tfds_builders  # registers 'kinetics400' and 'ssv2'
    builder = tfds.builder("kinetics400", data_dir="~/tfds")   # or "kinetics400/native"
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/k400_raw"))
    ds = builder.as_dataset(split="validation")   # {'video': (N, H, W, 3) uint8, 'label', ...}

Training and evaluation read a prepared builder with `data.tfds_name` (e.g.
'kinetics400/native') and `data.data_dir` (the TFDS data dir): see
`tadax.data.tfds_source`.

Manual dir layouts:
* Kinetics-400: `train.csv`, `validate.csv` (official CSVs) and the clips
  `ID_START_END.mp4` anywhere below the folder.
* SSv2: `labels.json`, `something-something-v2-{train,validation}.json` and the
  `ID.webm` files anywhere below the folder.
"""

import abc
import io
import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from tadax.data import class_list
from tadax.prepare import annotations
from tadax.prepare.encode import EncodeOptions, encode_entry

_FEATURES_DOC = ("video: JPEG frames at the native rate, short side at most the config's; "
                 "label: class index in the sorted class list (labels.json order for SSv2); "
                 "label_text; filename; fps; num_frames.")


class VideoConfig(tfds.core.BuilderConfig):
    """How frames are stored: a short side of at most `short_side` pixels (larger frames
    downscaled, smaller ones kept; 0: as decoded), native frame rate."""

    def __init__(self, *, short_side: int, **kwargs):
        super().__init__(**kwargs)
        self.short_side = short_side


_CONFIGS = [VideoConfig(name="short320", short_side=320,
                        description="short side downscaled to 320 pixels where larger"),
            VideoConfig(name="native", short_side=0, description="frames as decoded")]


class _VideoFolderBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared body: subclasses say how the manual dir lists (split -> entries) and classes."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Frames resized to the config's short side.",
        "1.1.0": "Frames only downscaled to the config's short side, never enlarged.",
    }
    BUILDER_CONFIGS = _CONFIGS

    @abc.abstractmethod
    def _classes_and_splits(self, manual_dir: str
                            ) -> Tuple[List[str], Dict[str, Tuple[list, list]]]:
        """(class names, {tfds split: (entries, problems)}) of the files in `manual_dir`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_FEATURES_DOC,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.Scalar(dtype=np.int64),
                "label_text": tfds.features.Text(),
                "filename": tfds.features.Text(),
                "fps": tfds.features.Scalar(dtype=np.float32),
                "num_frames": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=("video", "label"),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        classes, splits = self._classes_and_splits(manual_dir)
        if not splits:
            raise FileNotFoundError(f"{manual_dir}: no annotation files; "
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        class_list.write_classes(os.path.join(self.data_dir, "classes.txt"), classes)
        return {name: self._generate_examples(entries, problems)
                for name, (entries, problems) in splits.items()}

    def _generate_examples(self, entries, problems):
        opts = EncodeOptions(short_side=self.builder_config.short_side)
        skipped = len(problems)
        for entry in entries:
            enc = encode_entry(entry, opts)
            if enc.skipped:
                skipped += 1
                logging.warning("skipping %s: %s", entry.path, enc.skipped)
                continue
            yield entry.path, {
                "video": [io.BytesIO(jpeg) for jpeg in enc.frames],
                "label": entry.label,
                "label_text": entry.text,
                "filename": entry.filename,
                "fps": enc.fps,
                "num_frames": len(enc.frames),
            }
        logging.info("%d videos or annotation lines skipped", skipped)


class Kinetics400(_VideoFolderBuilder):
    """Kinetics-400 from the official CSVs and downloaded clips (default: short sides <= 320)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place train.csv, validate.csv (official Kinetics-400 CSVs) "
                                    "and the ID_START_END.mp4 clips in the manual dir.")
    _SPLITS = {"train": "train.csv", "validation": "validate.csv"}

    def _classes_and_splits(self, manual_dir: str):
        csvs = {s: os.path.join(manual_dir, f) for s, f in self._SPLITS.items()}
        present = {s: p for s, p in csvs.items() if os.path.isfile(p)}
        if not present:
            return [], {}
        classes = annotations.kinetics_csv_labels(list(present.values()))
        videos = annotations.index_videos(manual_dir)
        return classes, {s: annotations.kinetics_csv(p, manual_dir, classes, videos)
                         for s, p in present.items()}


class Ssv2(_VideoFolderBuilder):
    """Something-Something V2 from labels.json, the split JSONs and the .webm files (default:
    native size, already 240 pixels high)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place labels.json, something-something-v2-train.json, "
                                    "something-something-v2-validation.json and the .webm files "
                                    "in the manual dir.")
    DEFAULT_BUILDER_CONFIG_NAME = "native"
    _SPLITS = {"train": "something-something-v2-train.json",
               "validation": "something-something-v2-validation.json"}

    def _classes_and_splits(self, manual_dir: str):
        labels = os.path.join(manual_dir, "labels.json")
        if not os.path.isfile(labels):
            return [], {}
        classes = annotations.ssv2_classes(labels)
        videos = annotations.index_videos(manual_dir)
        return classes, {s: annotations.ssv2_json(os.path.join(manual_dir, f), manual_dir,
                                                  classes, videos)
                         for s, f in self._SPLITS.items()
                         if os.path.isfile(os.path.join(manual_dir, f))}
