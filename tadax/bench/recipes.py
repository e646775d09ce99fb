"""Run configs of the benchmarked models, with `--set key=value` overrides.

A model name picks its training recipe in `configs/` (the tiny quick-start
model takes `configs/quickstart.py`); overrides address any field of the run
config by its dotted path (`model.dtype=bfloat16`, `model.num_frames=32`,
`train.label_smoothing=0.0`, ...). Values are Python literals where they
parse as one, else strings.
"""

import ast
import importlib
from typing import Dict, Iterable, List, Tuple

import ml_collections

RECIPES: Dict[str, str] = {
    "tadaformer_tiny": "quickstart",
    "tadaformer_b16": "tadaformer_b16", "tadaformer_l14": "tadaformer_l14",
    "tadaconvnextv2_tiny": "tadaconvnextv2_tiny", "tadaconvnextv2_small": "tadaconvnextv2_small",
    "tadaconvnextv2_base": "tadaconvnextv2_base",
}


class BenchError(ValueError):
    """Bad benchmark input; the message names the flag or file and what is wrong."""


def parse_overrides(items: Iterable[str]) -> List[Tuple[str, object]]:
    """`['model.dtype=bfloat16', 'model.remat=full']` -> `[('model.dtype', 'bfloat16'), ...]`."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects KEY=VALUE (e.g. model.dtype=bfloat16), got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out.append((key, value))
    return out


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[Tuple[str, object]]) -> ml_collections.ConfigDict:
    """Sets each dotted field of `config` in place; unknown fields and wrong types are refused."""
    for key, value in overrides:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise BenchError(f"--set {key}: the run config has no field {key!r}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise BenchError(f"--set {key}: the run config has no field {key!r}")
        try:
            node[leaf] = value
        except TypeError as e:
            raise BenchError(f"--set {key}={value!r}: {e}") from None
    return config


def recipe_config(name: str, overrides: Iterable[Tuple[str, object]] = ()
                  ) -> ml_collections.ConfigDict:
    """The run config of model `name`'s recipe with `overrides` applied."""
    if name not in RECIPES:
        raise BenchError(f"--models {name}: unknown model; known: {', '.join(RECIPES)}")
    config = importlib.import_module(f"configs.{RECIPES[name]}").get_config()
    return apply_overrides(config, overrides)
