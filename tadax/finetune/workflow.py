"""The steps of `python -m tadax.finetune`, each resumable: list and split the videos,
prepare them, then fine-tune (`train_and_evaluate`) or probe (features, a linear
classifier), and write the report.

Work directory layout (local or gs://):

  W/split/      train.csv, val.csv, classes.txt, split.json (counts, skipped inputs)
  W/data/       the prepared shards (`python -m tadax.prepare generic`), classes.txt
  W/finetune/   the training run (checkpoints, config.json, metrics, eval/), report.md,
                preset.json (the choices made for it)
  W/linear_probe/  features/{train,val} (shards), classifier.npz, model/ (the backbone
                with the probe as its head), eval/, report.md
"""

import json
from typing import Any, Dict, List, Mapping, Tuple

import ml_collections
import numpy as np
from etils import epath

from tadax import checkpoint_io
from tadax.errors import ConfigError
from tadax.finetune import videos
from tadax.paths import user_path, write_npz
from tadax.train import run_config

DATA_DIR, FINETUNE_DIR, PROBE_DIR = "data", "finetune", "linear_probe"
PRESET_FILE = "preset.json"


def check_checkpoint(checkpoint: str) -> None:
    """ConfigError unless `checkpoint` is a converted model directory or a training run."""
    if not checkpoint:
        raise ConfigError("--checkpoint is required: a converted model directory "
                          "(python -m tadax.convert) or a training run")
    if not checkpoint_io.is_model_dir(checkpoint) and run_config.run_dir_of(checkpoint) is None:
        raise ConfigError(f"--checkpoint={checkpoint} is neither a converted model directory "
                          f"nor a training run with a saved {run_config.CONFIG_FILE}")


def list_videos(videos_dir: str, csv: str) -> videos.Listing:
    """The labelled videos of `--videos` (class folders) or `--csv` (with `--videos` as the
    root of its paths)."""
    if csv:
        return videos.from_csv(csv, videos_dir)
    if not videos_dir:
        raise ConfigError("give the videos: --videos DIR (one folder per class) or --csv FILE "
                          "(path,label lines)")
    return videos.from_folders(videos_dir)


def prepare(listing: videos.Listing, workdir: epath.Path, config: ml_collections.ConfigDict
            ) -> Dict[str, Any]:
    """Splits and prepares the videos (both resumable); returns the split summary."""
    from tadax.prepare import cli as prepare_cli

    ft = config.finetune
    summary = videos.record_split(workdir, listing, ft.val_fraction, ft.split_seed)
    split = workdir / videos.SPLIT_DIR
    if listing.skipped:
        (split / "skipped.txt").write_text("".join(f"{s}\t{r}\n" for s, r in listing.skipped))
        print(f"{len(listing.skipped)} inputs skipped, listed in {split / 'skipped.txt'} "
              f"(e.g. {listing.skipped[0][0]}: {listing.skipped[0][1]})", flush=True)
    print(f"{summary['num_train']} train / {summary['num_val']} val videos of "
          f"{len(listing.classes)} classes (val fraction {ft.val_fraction:g}, split seed "
          f"{ft.split_seed}): {split}", flush=True)
    root = videos.local_videos(listing, ft.cache_dir)
    argv = ["generic", "--root", root, "--out", str(workdir / DATA_DIR),
            "--split", f"train={split / 'train.csv'}", "--split", f"val={split / 'val.csv'}",
            "--labels", str(split / "classes.txt"), "--short-side", str(ft.short_side)]
    try:
        prepare_cli.prepare(argv)
    except prepare_cli.ChangedInputError as e:
        raise ConfigError(f"the videos changed since {workdir} was prepared ({e.change}): "
                          "fine-tune into a new --workdir") from None
    except prepare_cli.InputError as e:
        raise ConfigError(f"preparing the videos: {e}") from None
    return summary


def _same_checkpoint(a: str, b: str) -> bool:
    return str(user_path(a)) == str(user_path(b))


def finetune_config(checkpoint: str, workdir: epath.Path, config: ml_collections.ConfigDict,
                    given: Mapping[str, Any], num_train: int, num_classes: int,
                    preset_notes: List[Tuple[str, str]]
                    ) -> Tuple[ml_collections.ConfigDict, List[Tuple[str, str, str]], bool]:
    """(the run config, its choices, resuming?). A run directory with a saved config
    resumes with it (the command line's `--config.x.y` applied on top); else the preset's
    choices are completed for the data and device."""
    import jax
    from tadax.finetune import preset

    run_dir = workdir / FINETUNE_DIR
    saved = run_dir / run_config.CONFIG_FILE
    if saved.exists():
        config = run_config.read_run_config(str(run_dir))
        if not _same_checkpoint(config.init.checkpoint, checkpoint):
            raise ConfigError(f"{run_dir} fine-tunes {config.init.checkpoint}, not {checkpoint}: "
                              "use another --workdir")
        config.update_from_flattened_dict(dict(given))
        preset_file = run_dir / PRESET_FILE
        notes = ([tuple(n) for n in json.loads(preset_file.read_text())]
                 if preset_file.exists() else [])
        return config, notes, True
    notes = [(field, str(_get(config, field)) if field != "recipe" else "", why)
             for field, why in preset_notes if field not in given]
    notes += [(field, str(value), "given") for field, value in given.items()
              if field not in preset.CHOSEN]
    config.data.data_dir = str(workdir / DATA_DIR)
    notes += preset.fill_in(config, num_train=num_train, num_classes=num_classes,
                            given=set(given), devices=jax.device_count())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PRESET_FILE).write_text(json.dumps(notes, indent=1))
    return config, notes, False


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def run_finetune(config: ml_collections.ConfigDict, workdir: epath.Path) -> epath.Path:
    """Trains and evaluates in `W/finetune` (resuming); a run that has finished every step
    of `config` and its evaluation is not run again. Returns the evaluation folder."""
    from tadax.train.trainer import steps_per_epoch, train_and_evaluate

    run_dir = workdir / FINETUNE_DIR
    final = run_dir / "final_metrics.json"    # written after the evaluation's files
    if final.exists() and (run_dir / "eval" / "metrics.json").exists():
        total = int(round(config.train.epochs * steps_per_epoch(config)))
        if json.loads(final.read_text()).get("step") == total:
            print(f"fine-tune: {run_dir} has finished its {total} steps and its evaluation "
                  "(kept as they are)", flush=True)
            return run_dir / "eval"
    train_and_evaluate(config, str(run_dir))
    return run_dir / "eval"


def _checkpoint_model_config(checkpoint: str) -> ml_collections.ConfigDict:
    if checkpoint_io.is_model_dir(checkpoint):
        return checkpoint_io.read_model_config(checkpoint)
    return run_config.read_run_config(checkpoint).model


def _read_features(folder: epath.Path) -> Dict[str, np.ndarray]:
    """The shards of `python -m tadax.features` in `folder`, concatenated, by video id."""
    parts: Dict[str, list] = {"features": [], "label": [], "video_id": [], "filename": []}
    for shard in sorted(folder.glob("features-*-of-*.npz")):
        with shard.open("rb") as f, np.load(f) as data:
            if "features" not in data:
                continue
            for key in parts:
                parts[key].append(data[key])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(out["video_id"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def run_probe(config: ml_collections.ConfigDict, checkpoint: str, workdir: epath.Path
              ) -> Tuple[epath.Path, List[Tuple[str, str, str]]]:
    """Features once (resumable shards), the probe (trained once, kept in classifier.npz),
    its multi-view evaluation and the backbone-plus-probe model; returns the eval folder
    and the choices made."""
    from tadax.features import extract as features
    from tadax.data import pipeline
    from tadax.finetune import linear_probe
    from tadax.train import evaluation

    out = workdir / PROBE_DIR
    fcfg = ml_collections.ConfigDict(config.to_dict())
    fcfg.data.data_dir = str(workdir / DATA_DIR)
    fcfg.model = _checkpoint_model_config(checkpoint)
    fcfg.features.aggregate, fcfg.features.pre_pool = "all", False
    names = pipeline.dataset_class_names(fcfg.data)
    for split in ("train", "val"):
        try:
            features.extract(fcfg, checkpoint=checkpoint, output=str(out / "features" / split),
                             split=split, multi_view=True)
        except ValueError as e:   # features.json written with other settings
            raise ConfigError(f"{out}: {e}") from None
    train = _read_features(out / "features" / "train")
    val = _read_features(out / "features" / "val")
    stored = out / "classifier.npz"
    if stored.exists():
        with stored.open("rb") as f, np.load(f) as data:
            probe = dict(data)
        print(f"linear probe: {stored} (trained by an earlier run)", flush=True)
    else:
        p = config.probe
        probe = linear_probe.train(train["features"], train["label"], len(names), p.l2,
                                   p.folds, p.max_steps, p.tolerance, seed=config.seed)
        tmp = out / "classifier.npz.tmp"
        write_npz(tmp, **probe)
        tmp.rename(stored)
    n, v, _ = val["features"].shape
    probs = linear_probe.view_probs(val["features"], probe["kernel"], probe["bias"])
    views = {"probs": probs.reshape(n * v, -1).astype(np.float32),
             "label": np.repeat(val["label"], v), "video_id": np.repeat(val["video_id"], v),
             "view": np.tile(np.arange(v), n),
             "filename": np.repeat(np.array([f.encode() for f in val["filename"]], object), v)}
    videos_ = evaluation.aggregate_views(views["probs"], views["label"], views["video_id"])
    result = evaluation.metrics(views, videos_)
    evaluation.write_report(out / "eval", views, videos_, result, names)
    _save_model(checkpoint, fcfg.model, probe, out / "model")
    grid = ", ".join(f"{g:g}: {t:.1f}%" for g, t in zip(probe["cv_l2"], probe["cv_top1"]))
    notes = [("features", f"{v} views per video", "the recipe's evaluation views (clips x crops) "
                                                  "of the frozen backbone, each a training example"),
             ("probe.l2", f"{float(probe['l2']):g}",
              f"the best top-1 of {config.probe.folds}-fold cross-validation on the train videos "
              f"({grid})" if grid else "given")]
    return out / "eval", notes


def _save_model(checkpoint: str, model_cfg: ml_collections.ConfigDict,
                probe: Mapping[str, np.ndarray], path: epath.Path) -> None:
    """The checkpoint's backbone with the probe as its head, as a model directory
    (`eval.py --checkpoint PATH` classifies with it); kept if already there."""
    from tadax.train.checkpointing import load_weights

    if checkpoint_io.is_model_dir(str(path)):
        return
    variables, _ = load_weights(checkpoint)
    params = dict(variables["params"])
    params["head"] = {"out": {"kernel": probe["kernel"], "bias": probe["bias"]}}
    variables = dict(variables, params=params)
    cfg = ml_collections.ConfigDict(model_cfg.to_dict())
    cfg.num_classes = int(probe["kernel"].shape[1])
    checkpoint_io.save_variables(str(path), variables, cfg, overwrite=True)
