"""Checks a run's configuration before anything is built, so that a mistake costs a
one-line message instead of a traceback (or, worse, a run that cannot succeed)."""

import ml_collections

from tadax.data import pipeline
from tadax.errors import ConfigError

# How each dataset is prepared (`python -m tadax.prepare`; docs/data.md).
PREPARE = {
    "kinetics": "python -m tadax.prepare kinetics --root VIDEOS --out DIR "
                "--split train=train.csv --split val=validate.csv",
    "ssv2": "python -m tadax.prepare ssv2 --root VIDEOS --out DIR --labels labels.json "
            "--split train=something-something-v2-train.json "
            "--split val=something-something-v2-validation.json",
    "ssv1": "python -m tadax.prepare ssv1 --root FRAMES --out DIR --labels LABELS.csv "
            "--split train=TRAIN.csv --split val=VALIDATION.csv",
    "generic": "python -m tadax.prepare generic --root VIDEOS --out DIR "
               "--split train=train.csv --split val=val.csv",
}


def prepare_command(dataset: str) -> str:
    """The `python -m tadax.prepare` command line that makes `dataset`'s shards (placeholders in caps)."""
    if dataset.startswith("kinetics"):
        return PREPARE["kinetics"]
    return PREPARE.get(dataset, PREPARE["generic"])


def check_data(data_cfg: ml_collections.ConfigDict, *splits: str) -> None:
    """Raises `ConfigError` unless every split in `splits` has prepared shards."""
    if data_cfg.dataset == "synthetic" and not data_cfg.data_dir:
        return   # generated on first use
    for split in splits:
        try:
            pipeline.num_examples(data_cfg, split)
        except (FileNotFoundError, ValueError) as e:
            where = (f"in data.data_dir={data_cfg.data_dir!r} ({e})" if data_cfg.data_dir
                     else "(data.data_dir is not set)")
            raise ConfigError(
                f"no prepared {data_cfg.dataset} split {split!r} {where}: prepare it with "
                f"`{prepare_command(data_cfg.dataset)}` and pass "
                "--config.data.data_dir=DIR") from None


def check_start(init_cfg: ml_collections.ConfigDict, resuming: bool) -> None:
    """Refuses a new run of a fine-tuning recipe that has no starting point.

    init_cfg: `config.init`; a recipe with `start_from` set needs `checkpoint`
    unless `from_scratch`. A run that resumes from its checkpoints needs neither.
    """
    if resuming or init_cfg.checkpoint or init_cfg.from_scratch:
        return
    if init_cfg.get("start_from"):
        raise ConfigError(
            f"this recipe fine-tunes from {init_cfg.start_from}: pass "
            "--config.init.checkpoint=DIR, or --config.init.from_scratch=True to train from "
            "scratch (it will not reach the recipe's accuracy)")
