"""Every released recipe in configs/ against the original's settings file, field by field.

A recipe `configs/NAME.py` (its default `get_config()`) pairs with the original's
`configs/projects/*/<config.name>.yaml`, read with its `_BASE_*` chain as
`python -m tadax.convert zoo --upstream-config` reads it, over the original's
`pool/base.yaml`. Fields are compared by what they do, the original's side
computed from its definitions (`tests/original_settings.py`): the effective peak
learning rate (the original scales BASE_LR with the batch only for SGD/LARS
with ADJUST_LR), the whole learning-rate curve per 1/20 epoch (policy, warmup,
end value, length), the global batch (TRAIN.BATCH_SIZE per machine x
NUM_SHARDS), every parameter's lr multiplier and weight decay (the original's
grouping on the released checkpoint's state-dict names, against the recipe's
rules on the same parameters' tadax paths: layer decay, head and new-parameter
multipliers, no-decay exclusions), the views the run script really tests
(its automatic multi-view test), sampling by mode (the stride only where
interval sampling uses it), mixup/cutmix as its Mixup builds them, and so on
(FIELDS). A deliberate difference is listed in DELIBERATE: the value tadax uses
instead, derived from where the original states it, and why; the test fails if
the recipe holds neither the original's value nor that one, and if an entry no
longer differs.

Bugs this catches (each put in, watched failing, taken out; the failing field in brackets):
- TAdaFormer-B/16 warmup 4 epochs, not 5 [warmup epochs, lr schedule]; TAdaFormer SSv2
  warming up from 1e-6, not 1e-8 [warmup start lr, lr schedule]; TAdaFormer's cosine
  ending at 0, not 1e-6 [lr schedule]; the ConvNeXt recipes on 'cosine_v2' [lr schedule];
  TAdaConvNeXtV2-S for 90 epochs [epochs, lr schedule];
- TAdaConvNeXtV2-T's lr scaled with its batch (1e-3 at 512) [peak lr, lr schedule];
- TAdaFormer-L/14 SSv2 at a batch of 64; ConvNeXt-T at 256, not the 512 its YAML's
  comment states [global batch];
- TAdaFormer-L/14 with B/16's layer decay 0.7 [layer decay, lr per parameter];
  `ln_pre` left out of layer 0, 'tada' at x5 instead of x10, the ConvNeXt head at x10
  instead of x5 [lr per parameter];
- the 1-d parameters' exclusion dropped from `tadaformer_rules`, 'bias' dropped from the
  ConvNeXt no-decay rule [weight decay per parameter]; ConvNeXt wd 0.05 [weight decay];
- TAdaConvNeXtV2-S SSv2 with K400's drop path 0.4 [drop path]; head dropout 0 [head
  dropout]; label smoothing 0.1 in the ConvNeXt recipes [label smoothing]; an EMA left
  on [EMA]; mixup alpha 0.8 left in a recipe [mixup/cutmix];
- RandAugment n2 [RandAugment]; grayscale 0.3 [grayscale]; aspect 4/3 written 1.3333
  [train crop]; SSv2 flips without the label swap [SSv2 left/right labels];
- ConvNeXt train and test crop swapped in `recipe_overrides` [train/test crop size];
  ImageNet's mean for the ConvNeXt recipes [normalisation];
- the ConvNeXt Kinetics stride 4, not 5 [sampling]; the model built for 8 frames while
  the pipeline feeds 16 [frames]; SSv2 at 4 clips, the final multi-view test off [final
  test views];
- TAdaFormer SSv2 without double TAdaConv [architecture]; the L/14 recipes telling users
  to convert CLIP ViT-B/16 [starting point].
"""

import dataclasses
import functools
import importlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import original_settings as original
from conftest import REPO_ROOT, require, shared_dir
from tadax.models import from_upstream
from tadax.models.registry import UPSTREAM_KEYS
from tadax.train import mixup, optim
from tadax.weights import mapping

# configs/ modules that are not training recipes of a released model, and why.
NOT_RECIPES = {
    "__init__": "the package marker",
    "common": "the recipe builder",
    "rules": "the optimizer rules the recipes use",
    "checkpoint": "the evaluation config of a saved checkpoint",
    "quickstart": "the synthetic quick start; the original has no counterpart",
    "finetune": "a checkpoint's own recipe adapted to the user's videos (tadax.finetune)",
}
RECIPES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")
                 if p.stem not in NOT_RECIPES)
# Folders of the original's configs/projects holding the TAdaConvV2 releases.
RELEASE_FOLDERS = ("tadaconvnextv2", "tadaformer")
STEPS_PER_EPOCH = 20   # resolution of the lr curve compared
CURVE_STEPS = 200 * STEPS_PER_EPOCH + 1   # one array length for every recipe: compiled once


def upstream_configs() -> Path:
    return require(shared_dir() / "upstream" / "configs", "the original's settings files")


@dataclasses.dataclass
class Pair:
    """A recipe and the original's settings file it reproduces."""
    module: str
    config: ml_collections.ConfigDict
    yaml: Path
    s: Dict[str, Any]                                  # the original's settings, flat
    params: List[Tuple[str, Tuple[int, ...], str]]     # (torch name, shape, tadax path)

    @property
    def name(self) -> str:
        return self.config.name


@functools.lru_cache(maxsize=None)
def _manifests() -> Dict[str, Any]:
    path = require(shared_dir() / "manifests" / "zoo_state_dict_manifests.json",
                   "state-dict manifests")
    return json.loads(path.read_text())


def _trained_params(yaml_rel: str) -> List[Tuple[str, Tuple[int, ...], str]]:
    """The parameters of the released model trained with `yaml_rel` (its manifest)."""
    entries = [e for e in _manifests().values()
               if e["upstream_config"] == yaml_rel and not e["overrides"]]
    assert len(entries) == 1, f"{yaml_rel}: {len(entries)} manifests without overrides"
    out = []
    for name, shape, _ in entries[0]["state_dict"]:
        path = mapping.flax_path(name, len(shape))
        if path is not None and path[0] == "params":
            out.append((name, tuple(shape), "/".join(path[1:])))
    return out


@functools.lru_cache(maxsize=None)
def pair(module: str) -> Pair:
    config = importlib.import_module(f"configs.{module}").get_config()
    root = upstream_configs()
    found = [root / "projects" / f / f"{config.name}.yaml" for f in RELEASE_FOLDERS]
    found = [p for p in found if p.is_file()]
    assert len(found) == 1, (f"configs/{module}.py (name {config.name!r}): no settings file "
                             f"{config.name}.yaml in {root}/projects/ {RELEASE_FOLDERS}")
    rel = str(found[0].relative_to(root.parent))
    return Pair(module, config, found[0], original.settings(found[0], root),
                _trained_params(rel))


# --- ours: what tadax does with a recipe -------------------------------------------------

def _param_tree(p: Pair) -> Dict[str, Any]:
    """The recipe's parameters (unrolled layout) as a tree of shapes, from the manifest.
    Ranks are the torch ones; `tests/test_optim.py` checks on the real B/16 and ConvNeXt-T
    trees that the rules give the same groups on tadax's own shapes."""
    tree: Dict[str, Any] = {}
    for _, shape, path in p.params:
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jax.ShapeDtypeStruct(shape, jnp.float32)
    return tree


@functools.lru_cache(maxsize=None)
def _our_groups(module: str) -> Dict[str, Tuple[float, float]]:
    """{tadax path: (lr multiplier, weight decay)} under the recipe's optimizer rules."""
    p = pair(module)
    opt = p.config.optimizer
    lr, wd = optim.multipliers(_param_tree(p), opt)
    flat_lr = {optim.path_str(k): v for k, v in jax.tree_util.tree_leaves_with_path(lr)}
    flat_wd = {optim.path_str(k): v for k, v in jax.tree_util.tree_leaves_with_path(wd)}
    return {k: (flat_lr[k], opt.weight_decay * flat_wd[k]) for k in flat_lr}


def _original_groups(p: Pair) -> Dict[str, Tuple[float, float]]:
    return {path: original.param_group(p.s, name, shape) for name, shape, path in p.params}


def _our_lr_curve(c: ml_collections.ConfigDict) -> np.ndarray:
    schedule = optim.lr_schedule(c.optimizer, STEPS_PER_EPOCH, c.train.epochs)
    steps = int(round(c.train.epochs * STEPS_PER_EPOCH)) + 1
    return np.asarray(schedule(jnp.arange(max(steps, CURVE_STEPS))))[:steps]


def _original_lr_curve(s) -> np.ndarray:
    steps = int(round(float(s["OPTIMIZER.MAX_EPOCH"]) * STEPS_PER_EPOCH)) + 1
    return np.asarray([original.lr_at_epoch(s, k / STEPS_PER_EPOCH) for k in range(steps)])


def _our_mixing(d: ml_collections.ConfigDict) -> Optional[dict]:
    if not mixup.mixing_enabled(d):
        return None
    both = d.mixup_alpha > 0 and d.cutmix_alpha > 0
    return dict(mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, prob=d.mixup_prob,
                switch_prob=d.mixup_switch_prob if both else None, mode="batch")


def _original_mixing(s) -> Optional[dict]:
    """As the original's Mixup reads its settings: on if either is enabled; mixup's alpha
    read even when only cutmix is enabled; MINMAX (unsupported here) forces cutmix's to 1."""
    if not (s["AUGMENTATION.MIXUP.ENABLE"] or s["AUGMENTATION.CUTMIX.ENABLE"]):
        return None
    cut = 0.0
    if s["AUGMENTATION.CUTMIX.ENABLE"]:
        cut = s["AUGMENTATION.CUTMIX.ALPHA"]
        if s["AUGMENTATION.CUTMIX.MINMAX"] is not None:
            cut = ("MINMAX", s["AUGMENTATION.CUTMIX.MINMAX"])
    mix = s["AUGMENTATION.MIXUP.ALPHA"]
    both = mix > 0 and cut != 0.0
    return dict(mixup_alpha=mix, cutmix_alpha=cut, prob=s["AUGMENTATION.MIXUP.PROB"],
                switch_prob=s["AUGMENTATION.MIXUP.SWITCH_PROB"] if both else None,
                mode=s["AUGMENTATION.MIXUP.MODE"])


def _original_sampling(s) -> Tuple[str, Any, Any]:
    """(mode, stride, stride's frame rate); the stride applies only to interval sampling,
    whose window ends at its last frame unless MINUS_INTERVAL."""
    mode = s["DATA.SAMPLING_MODE"]
    if mode == "segment_based":
        return "segment", None, None
    assert mode == "interval_based", mode
    if s["DATA.MINUS_INTERVAL"]:
        return "interval (MINUS_INTERVAL)", None, None
    return "interval", s["DATA.SAMPLING_RATE"], float(s["DATA.TARGET_FPS"])


def _our_sampling(d) -> Tuple[str, Any, Any]:
    if d.sampling == "segment":
        return "segment", None, None
    return d.sampling, d.sampling_rate, float(d.target_fps)


def _original_train_crop(s) -> Tuple[str, Tuple[float, float], Any]:
    """(kind, range, aspect range): a random resized crop of area [a, b] when the jitter
    scales are <= 1, else a short-side jitter in pixels (not in tadax)."""
    lo, hi = s["DATA.TRAIN_JITTER_SCALES"]
    if lo <= 1:
        return "area", (lo, hi), tuple(s["AUGMENTATION.RATIO"])
    return "short side", (lo, hi), None


def _original_start(s) -> str:
    """What TRAIN.INIT starts from, in the words the recipes' `init.start_from` uses."""
    init, model = s["TRAIN.INIT"], s["MODEL.NAME"]
    if init == "clip":     # MODEL.NAME 'TAdaFormer_B16' -> 'CLIP ViT-B/16'
        size = model.split("_")[-1]
        return f"CLIP ViT-{size[0]}/{size[1:]}"
    if init == "in1k":     # 'TAdaConvNeXtV2-Base' -> 'ConvNeXt-B ImageNet-1K'
        return f"ConvNeXt-{model.split('-')[-1][0]} ImageNet-1K"
    return f"TRAIN.INIT {init!r}"


def _architecture(model: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The model's shape-defining fields (those the importer reads from VIDEO.BACKBONE)."""
    fields = [f for f in list(UPSTREAM_KEYS[model.family]) + list(UPSTREAM_KEYS["common"])
              if f not in ("num_classes", "num_frames", "dropout_rate", "drop_path_rate")]
    return dict(arch=model.arch, **{f: _plain(model[f]) for f in fields})


def _plain(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


# --- the fields: name -> (the original's value, ours, how they must agree) ----------------

def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    return type(a) is type(b) and a == b


def _same_curve(a: np.ndarray, b: np.ndarray) -> bool:
    """float32 (ours) against float64 (the definition): 1e-5 of the value or of the peak."""
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= 1e-5 * (np.abs(a) + a.max())))


def _same_per_param(index: int) -> Callable:
    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            math.isclose(a[k][index], b[k][index], rel_tol=1e-9, abs_tol=1e-15) for k in a)
    return same


@dataclasses.dataclass(frozen=True)
class Field:
    original: Callable[[Pair], Any]
    ours: Callable[[Pair], Any]
    same: Callable[[Any, Any], bool] = _same


FIELDS: Dict[str, Field] = {
    "dataset": Field(lambda p: p.s["TRAIN.DATASET"], lambda p: p.config.data.dataset),
    "classes (data, model)": Field(
        lambda p: (p.s["VIDEO.HEAD.NUM_CLASSES"],) * 2,
        lambda p: (p.config.data.num_classes, p.config.model.num_classes)),
    "architecture": Field(lambda p: _architecture(from_upstream(p.s)),
                          lambda p: _architecture(p.config.model)),
    "starting point": Field(lambda p: _original_start(p.s),
                            lambda p: p.config.init.start_from,
                            lambda o, u: isinstance(o, str) and o in u),
    # Optimizer and schedule.
    "optimizer (name, betas, eps)": Field(   # torch's AdamW with the original's betas
        lambda p: (p.s["OPTIMIZER.OPTIM_METHOD"], (0.9, 0.999), 1e-8),
        lambda p: (p.config.optimizer.name, (p.config.optimizer.b1, p.config.optimizer.b2),
                   p.config.optimizer.eps)),
    "peak lr": Field(lambda p: original.peak_lr(p.s), lambda p: p.config.optimizer.base_lr),
    "epochs": Field(lambda p: float(p.s["OPTIMIZER.MAX_EPOCH"]),
                    lambda p: float(p.config.train.epochs)),
    "warmup epochs": Field(lambda p: float(p.s["OPTIMIZER.WARMUP_EPOCHS"]),
                           lambda p: float(p.config.optimizer.warmup_epochs)),
    "warmup start lr": Field(lambda p: float(p.s["OPTIMIZER.WARMUP_START_LR"]),
                             lambda p: float(p.config.optimizer.warmup_start_lr)),
    "lr schedule": Field(lambda p: _original_lr_curve(p.s), lambda p: _our_lr_curve(p.config),
                         _same_curve),
    "global batch": Field(lambda p: original.global_batch(p.s),
                          lambda p: p.config.train.global_batch_size),
    "weight decay": Field(lambda p: float(p.s["OPTIMIZER.WEIGHT_DECAY"]),
                          lambda p: float(p.config.optimizer.weight_decay)),
    "layer decay": Field(lambda p: float(p.s["OPTIMIZER.LAYER_WISE_LR_DECAY"]),
                         lambda p: float(p.config.optimizer.layer_decay.rate)),
    "lr per parameter": Field(_original_groups, lambda p: _our_groups(p.module),
                              _same_per_param(0)),
    "weight decay per parameter": Field(_original_groups, lambda p: _our_groups(p.module),
                                        _same_per_param(1)),
    "EMA": Field(lambda p: p.s["MODEL.EMA.DECAY"] if p.s["MODEL.EMA.ENABLE"] else None,
                 lambda p: p.config.train.ema_decay or None),
    # Regularisation.
    "drop path": Field(lambda p: float(p.s["VIDEO.BACKBONE.DROP_PATH"]),
                       lambda p: float(p.config.model.drop_path_rate)),
    "head dropout": Field(lambda p: float(p.s["VIDEO.HEAD.DROPOUT_RATE"]),
                          lambda p: float(p.config.model.dropout_rate)),
    "label smoothing": Field(lambda p: float(p.s["AUGMENTATION.LABEL_SMOOTHING"]),
                             lambda p: float(p.config.train.label_smoothing)),
    "mixup/cutmix": Field(lambda p: _original_mixing(p.s), lambda p: _our_mixing(p.config.data)),
    # Training augmentation (the original's train transform always flips at random).
    "RandAugment": Field(
        lambda p: (p.s["AUGMENTATION.AUTOAUGMENT.TYPE"]
                   if p.s["AUGMENTATION.AUTOAUGMENT.ENABLE"] else ""),
        lambda p: p.config.data.randaugment),
    "flip": Field(lambda p: True, lambda p: p.config.data.flip),
    "SSv2 left/right labels": Field(
        lambda p: (("original" if p.s["AUGMENTATION.SSV2_FLIP"] else "off")
                   if "ssv2" in p.s["TRAIN.DATASET"] else None),
        lambda p: p.config.data.ssv2_flip_mode if p.config.data.dataset == "ssv2" else None),
    "grayscale": Field(
        lambda p: p.s["AUGMENTATION.GRAYSCALE"] if p.s["AUGMENTATION.COLOR_AUG"] else 0.0,
        lambda p: p.config.data.grayscale_p),
    # What tadax fixes in code: no colour jitter, random erasing or attention dropout; the
    # views' softmax scores summed.
    "fixed in tadax (colour jitter, erasing, attention dropout, view ensemble)": Field(
        lambda p: (p.s["AUGMENTATION.COLOR_P"] if p.s["AUGMENTATION.COLOR_AUG"] else 0.0,
                   bool(p.s["AUGMENTATION.RANDOM_ERASING.ENABLE"]),
                   float(p.s.get("VIDEO.BACKBONE.ATTN_DROPOUT") or 0.0),
                   p.s["DATA.ENSEMBLE_METHOD"]),
        lambda p: (0.0, False, 0.0, "sum")),
    "train crop size": Field(lambda p: p.s["DATA.TRAIN_CROP_SIZE"],
                             lambda p: p.config.data.train_crop_size),
    "train crop (kind, range, aspect)": Field(
        lambda p: _original_train_crop(p.s),
        lambda p: ("area", tuple(p.config.data.train_scale), tuple(p.config.data.ratio))),
    "normalisation (mean, std)": Field(
        lambda p: (tuple(p.s["DATA.MEAN"]), tuple(p.s["DATA.STD"])),
        lambda p: (tuple(p.config.data.mean), tuple(p.config.data.std))),
    # Clips.
    "frames (data, model)": Field(lambda p: (p.s["DATA.NUM_INPUT_FRAMES"],) * 2,
                                  lambda p: (p.config.data.num_frames, p.config.model.num_frames)),
    "sampling (mode, rate, fps)": Field(lambda p: _original_sampling(p.s),
                                        lambda p: _our_sampling(p.config.data)),
    # Evaluation.
    "test scale": Field(lambda p: p.s["DATA.TEST_SCALE"], lambda p: p.config.data.test_scale),
    "test crop size": Field(lambda p: p.s["DATA.TEST_CROP_SIZE"],
                            lambda p: p.config.data.test_crop_size),
    "final test views (clips, crops)": Field(
        lambda p: original.final_views(p.s),
        lambda p: ((p.config.data.num_clips, p.config.data.num_crops)
                   if p.config.eval.final_multi_view else (1, 1))),
}


# --- deliberate differences ----------------------------------------------------------------

def _commented_batch(p: Pair) -> int:
    """The global batch the YAML's comment states ('total batch size: 64x4=256')."""
    m = re.search(r"total batch size:\s*(\d+)\s*x\s*(\d+)\s*=\s*(\d+)", p.yaml.read_text())
    assert m, f"{p.yaml}: no 'total batch size: AxB=C' comment"
    per_machine, machines, total = map(int, m.groups())
    assert per_machine == p.s["TRAIN.BATCH_SIZE"] and per_machine * machines == total, m.group(0)
    return total


def _readme_views(p: Pair) -> Tuple[int, int]:
    """(clips, crops) the original's README quotes for this model on Kinetics-400
    ('GFLOPs x crops x clips', e.g. '47x3x4'), over its rows of the same arch and frames."""
    text = require(shared_dir() / "seed" / "TAdaConvV2_README.md", "the original's README")
    section = text.read_text().split("### Kinetics 400")[1].split("###")[0]
    arch = p.config.model.arch
    label = {"tadaconvnextv2_tiny": "TAdaConvNeXtV2-T", "tadaconvnextv2_small": "TAdaConvNeXtV2-S",
             "tadaconvnextv2_base": "TAdaConvNeXtV2-B", "tadaformer_b16": "TAdaFormer-B/16",
             "tadaformer_l14": "TAdaFormer-L/14"}[arch]
    views = set()
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[0].lower() == label.lower() and cells[2] == str(
                p.config.data.num_frames):
            _, crops, clips = cells[3].split("x")
            views.add((int(clips), int(crops)))
    assert len(views) == 1, f"README rows of {label}, {p.config.data.num_frames} frames: {views}"
    return views.pop()


@dataclasses.dataclass(frozen=True)
class Deliberate:
    field: str
    recipes: str                        # regex on the recipe's name (= the YAML's stem)
    ours: Callable[[Pair], Any]         # the value tadax uses instead, from where it is stated
    reason: str


DELIBERATE = [
    Deliberate(
        "global batch", r"^tadaconvnextv2_", _commented_batch,
        "The ConvNeXt YAMLs set TRAIN.BATCH_SIZE 64 (T: 128) with the default NUM_SHARDS 1, "
        "a global batch of 64 (128) on one machine, but each states its run in a comment: "
        "'total batch size: 64x4=256' (T: 128x4=512), four machines. The recipes use that "
        "total, the batch the learning rate was tuned for and the zoo was trained with."),
    Deliberate(
        "final test views (clips, crops)", r"_k400_", _readme_views,
        "The original's run script follows training with a multi-view test of 10 clips x 3 "
        "crops on Kinetics; the README reports the Kinetics-400 zoo at 4 clips x 3 crops "
        "('x3x4'). The recipes evaluate as the reported numbers were measured; "
        "--config.data.num_clips=10 gives the run script's views."),
    Deliberate(
        "SSv2 left/right labels", r"_ssv2_", lambda p: "mirror",
        "The original flips every training clip at random and then, on a second independent "
        "coin, flips again and swaps the left/right classes (86/87, 93/94, 166/167), so half "
        "of its swapped labels describe clips that end up unmirrored. tadax swaps exactly "
        "when the clip ends up mirrored (ssv2_flip_mode='mirror'); 'original' restores the "
        "original's behaviour."),
    Deliberate(
        "starting point", r"^tadaconvnextv2_.*_ssv2_", lambda p: "Kinetics-400 model",
        "The ConvNeXt SSv2 YAMLs leave TRAIN.INIT at in1k with no checkpoint path, and their "
        "comment says the initialisation is from the Kinetics-400 pretrained model; the README "
        "lists these SSv2 models as pretrained on IN1K+K400. The recipes start from the "
        "model's Kinetics-400 checkpoint, with a new 174-class head (init.fresh '^head/')."),
]


def _deliberate(name: str, field: str) -> Optional[Deliberate]:
    hits = [d for d in DELIBERATE if d.field == field and re.search(d.recipes, name)]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def _show(value) -> str:
    if isinstance(value, np.ndarray):
        return f"curve of {value.size} points, max {value.max():.3g}, last {value[-1]:.3g}"
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def _per_param_diff(o: dict, u: dict, index: int) -> str:
    bad = [k for k in o if k not in u or not math.isclose(o[k][index], u[k][index],
                                                          rel_tol=1e-9, abs_tol=1e-15)]
    return ", ".join(f"{k}: original {o[k][index]:.6g}, ours "
                     f"{u[k][index] if k in u else None}" for k in bad[:4]) + (
        f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")


def _mismatch(name: str, field: str, p: Pair) -> Optional[str]:
    spec = FIELDS[field]
    o = spec.original(p)
    try:
        u = spec.ours(p)
    except Exception as e:  # a recipe our code refuses is a mismatch, not a crash
        return f"{field}: ours raises {type(e).__name__}: {e}"
    deliberate = _deliberate(name, field)
    if deliberate is None:
        if spec.same(o, u):
            return None
        if field.endswith("per parameter"):
            return f"{field}: {_per_param_diff(o, u, 0 if field.startswith('lr') else 1)}"
        return f"{field}: original {_show(o)}, ours {_show(u)}"
    instead = deliberate.ours(p)
    if spec.same(o, instead):
        return f"{field}: listed as deliberate, but the original's value is {_show(o)} now"
    if not spec.same(instead, u):
        return f"{field}: deliberately {_show(instead)}, ours {_show(u)} (original {_show(o)})"
    return None


# --- tests ----------------------------------------------------------------------------------

def test_every_release_has_a_recipe():
    """Every settings file the original ships for TAdaConvV2 has a recipe, and every recipe
    has one (`pair` fails on a recipe whose name matches no settings file)."""
    root = upstream_configs()
    released = {p.stem for f in RELEASE_FOLDERS for p in (root / "projects" / f).glob("*.yaml")}
    assert released, root
    ours = {pair(m).name for m in RECIPES}
    assert released == ours, (sorted(released - ours), sorted(ours - released))


@pytest.mark.parametrize("module", RECIPES)
def test_recipe_matches_the_original(module):
    p = pair(module)
    problems = [m for f in FIELDS if (m := _mismatch(p.name, f, p)) is not None]
    assert not problems, f"configs/{module}.py against {p.yaml.name}:\n  " + "\n  ".join(problems)


def test_every_deliberate_difference_applies():
    """Each listed difference names a field and matches at least one recipe (stale entries
    fail; whether each still differs is checked per recipe)."""
    names = [pair(m).name for m in RECIPES]
    for d in DELIBERATE:
        assert d.field in FIELDS, d.field
        assert any(re.search(d.recipes, n) for n in names), (d.field, d.recipes)
