"""The `config.data` block: every field the input pipeline reads, with defaults.

`data_config(dataset=..., **overrides)` fills the per-dataset defaults (number
of classes, split names, eval views, synthetic sizes) and then applies the
overrides. The recipe-dependent choices (normalisation, sampling, test scale)
differ between TAdaFormer and TAdaConvNeXtV2; `recipe_overrides(family,
dataset)` gives them as the original's configs set them.
"""

from typing import Any, Dict

import ml_collections

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What the original's ConvNeXt recipes actually use (its base config's DATA.MEAN/STD).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# Per-dataset defaults; anything not listed takes the generic default below.
_DATASETS: Dict[str, Dict[str, Any]] = {
    "kinetics400": dict(num_classes=400, num_clips=4, num_crops=3),
    "kinetics600": dict(num_classes=600, num_clips=4, num_crops=3),
    "kinetics700": dict(num_classes=700, num_clips=4, num_crops=3),
    "kinetics710": dict(num_classes=710, num_clips=4, num_crops=3),
    "ssv2": dict(num_classes=174, num_clips=2, num_crops=3),
    "ssv1": dict(num_classes=174, num_clips=2, num_crops=3),
    # The built-in temporal toy set: tiny frames, no flip (it would turn
    # left->right motion into right->left without swapping the label) and no
    # RandAugment/grayscale, so a tiny model learns it in minutes on a CPU.
    "synthetic": dict(num_classes=8, num_frames=8, train_crop_size=32, test_scale=32,
                      test_crop_size=32, train_scale=(0.6, 1.0), randaugment="",
                      grayscale_p=0.0, flip=False, num_clips=2, num_crops=1,
                      shuffle_buffer=512),
}


def _synthetic_block() -> ml_collections.ConfigDict:
    """Size and seed of the built-in synthetic dataset (generated on first use)."""
    return ml_collections.ConfigDict(dict(
        num_train=1024,      # videos in the 'train' split
        num_val=256,         # videos in the 'val' split
        frames=16,           # frames per generated video
        size=32,             # frame height = width in pixels
        fps=8,               # frame rate written into the mp4 files
        seed=0,              # the generated videos are a function of this seed and the sizes
        num_shards=4,        # TFRecord shards per split
    ))


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The default `config.data` block for `dataset` (default 'synthetic'), with `overrides`.

    Clips come out of the pipeline as `(B, T, H, W, 3)` with T = `num_frames`
    and H = W = `train_crop_size` (training) or `test_crop_size` (evaluation).
    Unknown override keys are an error.
    """
    dataset = overrides.get("dataset", "synthetic")
    c = ml_collections.ConfigDict()
    # What and where.
    c.dataset = dataset           # 'synthetic' | 'kinetics400/600/700' | 'ssv2' | 'ssv1' | any prepared name
    c.data_dir = ""               # folder of prepared shards `SPLIT-00000-of-000NN` + classes.txt
    c.tfds_name = ""              # a TFDS builder prepared under data_dir (e.g. 'kinetics400/short320',
                                  # see tadax/prepare/tfds_builders.py) instead of shards; its splits are
                                  # 'train' and 'validation'
    c.cache_dir = "~/.cache/tadax/synthetic"   # where 'synthetic' is generated on first use
    c.train_split = "train"
    c.val_split = "val"
    c.num_classes = 400
    c.synthetic = _synthetic_block()
    # Temporal sampling.
    c.num_frames = 16
    c.sampling = "segment"        # 'segment': one frame per segment | 'interval': T frames at a stride
    c.sampling_rate = 5           # stride of 'interval' sampling, in frames at `target_fps`
    c.target_fps = 0.0            # >0: 'interval' strides are in frames at this rate (stride x fps / target_fps); 0: native frames
    c.shuffle_frames = False      # shuffle the T sampled frames of each clip (train and eval): time-order ablation
    # Training augmentation (the original's base_dataset order).
    c.train_crop_size = 224
    c.train_scale = (0.08, 1.0)   # random resized crop: area fraction
    c.ratio = (0.75, 1.333)       # random resized crop: aspect ratio
    c.randaugment = "rand-m9-n4-mstd0.5-inc1"   # '' turns it off; same ops on every frame of a clip
    c.grayscale_p = 0.2
    c.flip = True
    c.ssv2_flip_mode = "mirror"   # ssv2 only: 'mirror' swaps left/right labels when the clip is flipped;
                                  # 'original' swaps them on an independent coin (the original's code); 'off'
    # Mixup/cutmix run in the train step on device (tadax/train/mixup.py), per group of
    # clips: each device's share of a micro-batch.
    c.mixup_alpha = 0.0           # > 0 turns mixup on
    c.cutmix_alpha = 0.0          # > 0 turns cutmix on
    c.mixup_prob = 1.0            # probability that a group is mixed at all
    c.mixup_switch_prob = 0.5     # with both on: probability of cutmix instead of mixup
    # Evaluation views.
    c.test_scale = 224            # short side before cropping
    c.test_crop_size = 224
    c.num_clips = 1               # temporal views per video (multi-view evaluation)
    c.num_crops = 1               # 1: centre crop | 3: along the long side
    # Normalisation and output.
    c.mean = CLIP_MEAN
    c.std = CLIP_STD
    c.dtype = "float32"           # 'float32' | 'bfloat16'
    # Input pipeline machinery.
    c.shuffle_buffer = 4096       # records shuffled before decoding
    c.prefetch = 2                # batches prepared ahead
    c.num_parallel_calls = -1     # decode/augment parallelism; -1: tf.data AUTOTUNE
    c.cycle_length = 8            # shard files read at once per stream
    c.num_streams = 0             # training reader streams (see pipeline.py); 0: gcd(global batch, files)

    c.update(_DATASETS.get(dataset, {}))
    unknown = sorted(set(overrides) - set(c.keys()))
    if unknown:
        raise KeyError(f"unknown data config field(s) {unknown}; known: {sorted(c.keys())}")
    for key, value in overrides.items():
        if key == "synthetic" and isinstance(value, dict):
            c.synthetic.update(value)
        else:
            c[key] = value
    return c


def recipe_overrides(family: str, dataset: str) -> Dict[str, Any]:
    """The original's data settings for a model `family` ('tadaformer' | 'convnext') on `dataset`.

    TAdaFormer: CLIP normalisation, segment sampling, test scale 224. ConvNeXt:
    the mean/std its configs inherit (0.45/0.225 per channel, not ImageNet's),
    test scale/crop 256, and on Kinetics interval sampling at stride 5 in 30 fps frames
    (the stride scales with each video's own rate, as the original's TARGET_FPS: 30 does).
    """
    if family == "tadaformer":
        return dict(mean=CLIP_MEAN, std=CLIP_STD, sampling="segment", test_scale=224,
                    test_crop_size=224)
    if family == "convnext":
        out = dict(mean=KINETICS_MEAN, std=KINETICS_STD, sampling="segment", test_scale=256,
                   test_crop_size=256)
        if dataset.startswith("kinetics"):
            out.update(sampling="interval", sampling_rate=5, target_fps=30.0)
        return out
    raise ValueError(f"unknown model family {family!r}: 'tadaformer' or 'convnext'")


# The dataset of a released model, told by its number of classes (SSv1 and SSv2 both
# have 174 and the same views; the zoo's 174-class models are SSv2's).
DATASET_OF_CLASSES = {400: "kinetics400", 600: "kinetics600", 700: "kinetics700",
                      710: "kinetics710", 174: "ssv2"}


def released_model_data_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The original's evaluation preprocessing and views for a model, from its config alone.

    The dataset comes from the class count (`DATASET_OF_CLASSES`, else a generic
    one), the recipe settings from the family (`recipe_overrides`); clips have
    the model's `num_frames`. TAdaFormer's views are cut at its `image_size`
    (its position embedding fixes it); ConvNeXt keeps the recipe's 256.
    """
    dataset = DATASET_OF_CLASSES.get(model_cfg.num_classes, "custom")
    family = "tadaformer" if model_cfg.family == "tadaformer" else "convnext"
    c = data_config(dataset=dataset, num_classes=model_cfg.num_classes,
                    num_frames=model_cfg.num_frames, **recipe_overrides(family, dataset))
    if family == "tadaformer":
        c.test_scale = c.test_crop_size = model_cfg.image_size
    return c
