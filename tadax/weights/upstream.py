"""The original project's YAML settings files, inheritance resolved, as flat dotted keys.

A settings file of the original (`configs/projects/.../*.yaml`) may name
parent files: `_BASE_` (or `_BASE`), or `_BASE_RUN` and `_BASE_MODEL`. Values
of a child replace those of its parents, key by key in nested blocks; with
`_BASE_RUN` and `_BASE_MODEL` the run file wins over the model file. A parent
path starting with `./` is relative to the directory of the file the user
passed (as the original resolves it), any other relative path to the
directory of the file naming it. The original finally merges everything
onto its global `configs/pool/base.yaml`; settings missing from the chain
fall back to our defaults, and the importer names each one it had to take.
"""

import re
from typing import Any, Dict, List, Mapping

import yaml
from etils import epath

PARENT_KEYS = ("_BASE_", "_BASE", "_BASE_RUN", "_BASE_MODEL")


class UpstreamConfigError(ValueError):
    """A settings file cannot be read; the message names the file and the problem."""


def _read_yaml(path: epath.Path) -> Dict[str, Any]:
    if not path.exists():
        raise UpstreamConfigError(f"{path}: no such settings file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UpstreamConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UpstreamConfigError(f"{path}: expected a mapping at the top level, "
                                  f"found {type(data).__name__}")
    return data


def _merge(base: Dict[str, Any], child: Mapping[str, Any]) -> Dict[str, Any]:
    """`child` over `base`, recursing into blocks both define; parent keys dropped."""
    out = dict(base)
    for key, value in child.items():
        if key in PARENT_KEYS:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parent_path(ref: str, current: epath.Path, top: epath.Path) -> epath.Path:
    if ref.startswith("./"):
        return top.parent / ref[2:]
    return current.parent / ref


def _resolve(path: epath.Path, top: epath.Path, chain: List[str]) -> Dict[str, Any]:
    if str(path) in chain:
        raise UpstreamConfigError(f"{path}: inheritance cycle {' -> '.join(chain + [str(path)])}")
    cfg = _read_yaml(path)
    chain = chain + [str(path)]
    parents = []
    single = cfg.get("_BASE_", cfg.get("_BASE"))
    if single is not None:
        parents.append(single)
    else:
        parents.extend(cfg[k] for k in ("_BASE_MODEL", "_BASE_RUN") if cfg.get(k) is not None)
    merged: Dict[str, Any] = {}
    for ref in parents:  # lowest priority first
        if not isinstance(ref, str):
            raise UpstreamConfigError(f"{path}: a parent setting must be a file path, got {ref!r}")
        merged = _merge(merged, _resolve(_parent_path(ref, path, top), top, chain))
    return _merge(merged, cfg)


_EXPONENT_NUMBER = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-6` (no dot) as a string; the original turns those into floats."""
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    return value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = _number(value)
    return flat


def load_upstream_settings(path: str) -> Dict[str, Any]:
    """A settings file of the original, its parents merged in -> `{'VIDEO.BACKBONE.DEPTH': 12, ...}`.

    path: the YAML the model was trained with (local or gs://).
    """
    top = epath.Path(path)
    return _flatten(_resolve(top, top, []))
