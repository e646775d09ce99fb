"""The report of a zoo conversion (`python -m tadax.convert zoo ... --report FILE`).

It says what the converted model is and why: the fields read off the weights
(each with the keys and shapes it was read from); the settings no weight shows,
each with its value and where that came from (the original's settings file
given with `--upstream-config`, `--set` / `--num-frames`, or the default
`tadax.weights.infer.UNSEEN_SETTINGS` names); parameter counts per module; and
the preprocessing and views that eval.py and `python -m tadax.features` attach to
the converted directory (the original's recipe for its family and dataset,
`released_model_data_config`). With `--against-original PATH` it adds the
per-block max error against the original code (`against_original.block_errors`).
FILE ending in `.json` gets JSON, any other name Markdown.
"""

import json
import re
from typing import Any, Dict, List, Mapping, Optional

import ml_collections
import numpy as np
from etils import epath

from tadax.data.config import DATASET_OF_CLASSES, released_model_data_config
from tadax.models.registry import upstream_key
from tadax.weights import mapping
from tadax.weights.infer import UNSEEN_SETTINGS, read_off_weights


def _value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _natural(path: str) -> List[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def parameter_counts(variables: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """[{'module', 'parameters', 'batch_stats'}] per module two levels deep
    (`backbone/layers_0`, `head/out`), sorted by name with numbers as numbers."""
    counts: Dict[str, Dict[str, int]] = {}
    for path, array in mapping.flatten(dict(variables)).items():
        collection, module = path[0], "/".join(path[1:3])
        row = counts.setdefault(module, {"parameters": 0, "batch_stats": 0})
        row["parameters" if collection == "params" else "batch_stats"] += int(np.size(array))
    return [dict(module=m, **counts[m]) for m in sorted(counts, key=_natural)]


def preprocessing(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The evaluation preprocessing and views attached to a converted model, and whence."""
    data = released_model_data_config(cfg)
    family = "TAdaFormer" if cfg.family == "tadaformer" else "TAdaConvNeXtV2"
    if cfg.num_classes in DATASET_OF_CLASSES:
        origin = (f"the original's {family} recipe for {data.dataset} (the dataset told by "
                  f"the {cfg.num_classes} classes of head.out.weight)")
    else:
        origin = (f"the original's {family} recipe settings; no released dataset has "
                  f"{cfg.num_classes} classes, so the views are a generic single view "
                  "(override them with --config.data.*)")
    keys = ["num_frames", "sampling"]
    if data.sampling == "interval":
        keys += ["sampling_rate", "target_fps"]
    keys += ["test_scale", "test_crop_size", "num_clips", "num_crops", "mean", "std"]
    return {"dataset": data.dataset, "from": origin,
            "settings": {k: _value(data[k]) for k in keys}}


def build_report(*, source: str, output: str, ema: bool, state_dict: Mapping[str, np.ndarray],
                 cfg: ml_collections.ConfigDict, variables: Mapping[str, Any],
                 given_from: Mapping[str, str]) -> Dict[str, Any]:
    """The report of converting `state_dict` (read from `source`) into `cfg` and `variables`.

    given_from: for each model config field given on the command line, where it came
    from (e.g. 'mine.yaml (VIDEO.BACKBONE.NUM_HEADS)', '--set').
    """
    _, fields, evidence = read_off_weights(state_dict)
    read = [{"field": "arch", "value": cfg.arch, "from": evidence["arch"]}]
    read += [{"field": f, "value": _value(cfg[f]), "from": evidence[f]} for f in fields]
    unseen = UNSEEN_SETTINGS[cfg.family]
    given = [{"field": f, "value": _value(cfg[f]), "from": given_from[f]}
             for f in given_from if f not in fields]
    assumed = [{"field": f, "value": _value(cfg[f]), "from": origin,
                "original_key": upstream_key(cfg.family, f)}
               for f, origin in unseen.items() if f not in given_from]
    modules = parameter_counts(variables)
    tensors = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    return {
        "input": source, "output": output,
        "state_dict": "model_ema_state (--ema)" if ema else "the model's state dict",
        "read_off_the_weights": read, "given": given, "assumed": assumed,
        "parameters": {"total": sum(m["parameters"] for m in modules),
                       "batch_stats": sum(m["batch_stats"] for m in modules),
                       "source_values": int(sum(np.size(v) for v in tensors.values())),
                       "source_tensors": len(tensors), "modules": modules},
        "preprocessing": preprocessing(cfg),
    }


def _table(headers: List[str], rows: List[List[Any]]) -> List[str]:
    cells = lambda row: "| " + " | ".join(str(c) for c in row) + " |"  # noqa: E731
    return [cells(headers), "|" + "---|" * len(headers)] + [cells(r) for r in rows]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: one section per part, tables for the lists."""
    p = report["parameters"]
    lines = [f"# Conversion report: {report['input']}", "",
             f"Converted into `{report['output']}` from {report['state_dict']}.", "",
             "## Read off the weights", ""]
    lines += _table(["field", "value", "read from"],
                    [[r["field"], f"`{r['value']}`", r["from"]] for r in report["read_off_the_weights"]])
    if report["given"]:
        lines += ["", "## Given on the command line", ""]
        lines += _table(["field", "value", "from"],
                        [[r["field"], f"`{r['value']}`", r["from"]] for r in report["given"]])
    lines += ["", "## Assumed (no weight shows them)", ""]
    if report["assumed"]:
        lines += _table(["field", "value", "from", "the original's key"],
                        [[r["field"], f"`{r['value']}`", r["from"], r["original_key"]]
                         for r in report["assumed"]])
    else:
        lines += ["Nothing: every setting came from the weights or the command line."]
    lines += ["", "## Parameters per module", "",
              f"{p['total']:,} parameters and {p['batch_stats']:,} batch statistics; the source "
              f"held {p['source_values']:,} values in {p['source_tensors']} tensors (without "
              "`num_batches_tracked`).", ""]
    lines += _table(["module", "parameters", "batch statistics"],
                    [[m["module"], f"{m['parameters']:,}", f"{m['batch_stats']:,}"]
                     for m in p["modules"]])
    pre = report["preprocessing"]
    lines += ["", "## Preprocessing attached", "",
              f"What eval.py and `python -m tadax.features` use for this model: {pre['from']}.", ""]
    lines += _table(["setting", "value"], [[k, f"`{v}`"] for k, v in pre["settings"].items()])
    against: Optional[Mapping[str, Any]] = report.get("against_original")
    if against:
        lines += ["", "## Against the original", "",
                  f"The original's code from `{against['original']}` "
                  f"(`{against['settings_file']}` with this model's settings), the same weights, "
                  f"one random clip {tuple(against['clip'])} (seed {against['seed']}), eval mode.",
                  ""]
        lines += _table(["output", "max abs error", "max abs (original)"],
                        [[r["output"], f"{r['max_abs_error']:.3g}", f"{r['max_abs']:.3g}"]
                         for r in against["rows"]])
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], path: str) -> None:
    """Writes `report` to `path` (local or gs://): JSON for `.json`, else Markdown."""
    text = (json.dumps(report, indent=1) + "\n" if path.endswith(".json")
            else render_markdown(report))
    epath.Path(path).write_text(text)
