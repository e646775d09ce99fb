"""The config a training run was made with, saved in its run directory and read back.

`RUN/config.json` holds the whole run config (model, data, optimizer, eval,
mesh, ...), so that `eval.py --checkpoint RUN` evaluates with the run's own
data settings. JSON has no tuples: reading turns every list back into a tuple,
as the configs write their sequences; the model block of an older run is
brought up to date (`tadax.models.registry.complete_model_config`).

A run that resumes keeps its config: a rerun whose config differs from
`config.json` is refused in one line naming each differing field, before
anything is written, unless every difference is on `MAY_CHANGE_ON_RESUME`.
An accepted change is appended to `RUN/config_history.jsonl` (when, at which
step, each field's old and new value) before `config.json` is replaced by the
new config, so the record always describes the run and how it got there.
"""

import datetime
import json
from typing import Any, Dict, Mapping, Optional, Tuple

import ml_collections
from etils import epath

from tadax.errors import RunDirectoryError
from tadax.models import complete_model_config

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# What a resumed run may change, by field or by block (`block.*`): how long it trains
# (the learning-rate schedule stretches to the new end), how often it logs, evaluates and
# saves, how it is laid out on devices and in memory, and where its files are. Every other
# field (model, data, optimizer, seed, batch, init, ...) shapes what the checkpoints hold.
MAY_CHANGE_ON_RESUME = (
    "name", "workdir",
    "train.epochs", "train.log_every_steps", "train.grad_accum_steps",
    "eval.*", "checkpoint.*", "features.*", "mesh.*", "sharding.*",
    "model.remat", "model.scan_layers", "model.attention_impl", "model.tadaconv_impl",
    "model.depthwise_impl",
    "data.cache_dir", "data.prefetch", "data.num_parallel_calls",
)

class _Absent:
    """A field one of two configs does not have."""


_ABSENT = _Absent()


def may_change_on_resume(field: str) -> bool:
    """Whether `field` (dotted, e.g. `train.epochs`) is on `MAY_CHANGE_ON_RESUME`."""
    return any(field == f or (f.endswith(".*") and field.startswith(f[:-1]))
               for f in MAY_CHANGE_ON_RESUME)


def _write_text_atomically(path: epath.Path, text: str) -> None:
    """Writes `text` beside `path` and moves it into place: a kill mid-write never leaves
    a half-written file (on GCS, one object upload is atomic by itself)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config` to `workdir/config.json` (call on one host)."""
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    _write_text_atomically(path / CONFIG_FILE, config.to_json_best_effort(indent=1))


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


def _read_stored(path: epath.Path) -> Dict[str, Any]:
    """The dict in a run's `config.json`, model block completed; `RunDirectoryError` when it
    is not a JSON object."""
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirectoryError(
            f"{path} is not valid JSON ({e}): the run's record of its config is damaged; "
            f"restore it from a copy (or rewrite it from the run's command)") from None
    if not isinstance(stored, dict):
        raise RunDirectoryError(f"{path} holds JSON {type(stored).__name__}, not the object of "
                                "a run config: restore it from a copy")
    stored = _tuples(stored)
    if "model" in stored:
        stored["model"] = complete_model_config(stored["model"])
    return stored


def read_run_config(path: str) -> ml_collections.ConfigDict:
    """The saved config of the run that `path` (run dir, `checkpoints/` or a step) belongs to.

    Model config fields added since the run was saved get their defaults.
    Raises FileNotFoundError when no `config.json` is found, `RunDirectoryError` when it
    is not JSON.
    """
    run_dir = run_dir_of(path)
    if run_dir is None:
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or the run directory above it")
    return ml_collections.ConfigDict(_read_stored(run_dir / CONFIG_FILE))


def _flat(tree, prefix: str = "") -> Dict[str, Any]:
    """{dotted field: value} of a nested dict / ConfigDict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_stored(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """`config` as reading it back from config.json would give it."""
    return _tuples(json.loads(config.to_json_best_effort()))


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resume_changes(config: ml_collections.ConfigDict, workdir: epath.Path
                   ) -> Optional[Dict[str, Tuple[Any, Any]]]:
    """{field: (saved value, new value)} of the fields in which `config` differs from the
    run's `config.json` (None when the run has none). Writes nothing.

    Raises `RunDirectoryError`, naming every such field, when one of them may not
    change on resume (a field absent from the saved config, added to tadax since,
    takes its new value).
    """
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return None
    old, new = _flat(_read_stored(path)), _flat(_as_stored(config))
    changes = {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
               if old.get(k, _ABSENT) != new.get(k, _ABSENT)}
    refused = [k for k, (was, _) in changes.items()
               if was is not _ABSENT and k in new and not may_change_on_resume(k)]
    if refused:
        listed = ", ".join(f"{k} {_short(changes[k][0])} -> {_short(changes[k][1])}"
                           for k in refused)
        raise RunDirectoryError(
            f"{workdir} holds a run made with another config ({path}): {listed}. These "
            "fields cannot change when a run resumes (docs/run_directory.md lists those that "
            "can); rerun with the run's values, or pass another --workdir to start a new run")
    return changes


def record_run_config(config: ml_collections.ConfigDict, workdir: epath.Path,
                      changes: Optional[Mapping[str, Tuple[Any, Any]]], step: int) -> None:
    """Makes `config.json` describe `config` (call on one host, after `resume_changes`):
    written when missing, left alone when unchanged; an accepted change is first
    appended to `config_history.jsonl` with the `step` the run resumed at."""
    if changes == {}:
        return
    if changes:
        entry = dict(time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     resumed_at_step=int(step),
                     changes={k: {"was": _json_value(a), "now": _json_value(b)}
                              for k, (a, b) in changes.items()})
        with (workdir / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(entry) + "\n")
    write_run_config(config, workdir)


def _json_value(value: Any) -> Any:
    return None if value is _ABSENT else value
