"""The config a training run was made with, saved in its run directory and read back.

`RUN/config.json` holds the whole run config (model, data, optimizer, eval,
mesh, ...), so that `eval.py --checkpoint RUN` evaluates with the run's own
data settings. JSON has no tuples: reading turns every list back into a tuple,
as the configs write their sequences; the model block of an older run is
brought up to date (`tadax.models.registry.complete_model_config`).
"""

import json
from typing import Any, Optional

import ml_collections
from etils import epath

from tadax.models import complete_model_config

CONFIG_FILE = "config.json"


def write_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config` to `workdir/config.json` (call on one host)."""
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))


def run_dir_of(path: str) -> Optional[epath.Path]:
    """The run directory holding `config.json` for a run, its `checkpoints/` or a step
    directory; None if there is none."""
    candidate = epath.Path(path)
    for _ in range(3):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
        candidate = candidate.parent
    return None


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def read_run_config(path: str) -> ml_collections.ConfigDict:
    """The saved config of the run that `path` (run dir, `checkpoints/` or a step) belongs to.

    Model config fields added since the run was saved get their defaults.
    Raises FileNotFoundError when no `config.json` is found.
    """
    run_dir = run_dir_of(path)
    if run_dir is None:
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or the run directory above it")
    stored = _tuples(json.loads((run_dir / CONFIG_FILE).read_text()))
    if "model" in stored:
        stored["model"] = complete_model_config(stored["model"])
    return ml_collections.ConfigDict(stored)
