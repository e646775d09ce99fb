"""`report.md`: what a fine-tune or probe was run on, with what choices, and how it did,
class by class (the evaluation folder beside it holds the confusion matrix PNG, the
predictions and metrics.json)."""

import json
from typing import Any, Mapping, Sequence, Tuple

from etils import epath


def per_class_rows(metrics: Mapping[str, Any], names: Sequence[str],
                   split: Mapping[str, Any]) -> list:
    """(class name, train videos, val videos, val top-1 % or None) per class, in label order."""
    counts = split["classes"]
    return [(name, counts.get(name, {}).get("train", 0), counts.get(name, {}).get("val", 0),
             accuracy) for name, accuracy in zip(names, metrics["per_class_accuracy"])]


def markdown(title: str, checkpoint: str, split: Mapping[str, Any], metrics: Mapping[str, Any],
             names: Sequence[str], notes: Sequence[Tuple[str, str, str]]) -> str:
    """The report's text."""
    views = metrics["views_per_video"]
    lines = [f"# {title}", "",
             f"- checkpoint: `{checkpoint}`",
             f"- videos: `{split['root']}`: {split['num_train']} train, {split['num_val']} val "
             f"(val fraction {split['val_fraction']:g}, split seed {split['split_seed']}; "
             f"{len(split['skipped'])} inputs skipped)",
             f"- validation, {metrics['num_videos']} videos of {views[0]}"
             + (f"-{views[1]}" if views[1] != views[0] else "") + " views each (scores summed): "
             f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, mean per-class "
             f"{metrics['mean_class_accuracy']:.2f}%",
             "- confusion matrix: `eval/confusion.png`; predictions: `eval/predictions.jsonl`; "
             "metrics: `eval/metrics.json`", "",
             "| class | train videos | val videos | val top-1 % |", "|---|---|---|---|"]
    for name, train, val, accuracy in per_class_rows(metrics, names, split):
        lines.append(f"| {name} | {train} | {val} | "
                     + ("-" if accuracy is None else f"{accuracy:.1f}") + " |")
    if notes:
        lines += ["", "## Choices", ""]
        lines += [f"- `{field}`" + (f" = {value}" if value else "") + f": {why}"
                  for field, value, why in notes]
    return "\n".join(lines) + "\n"


def write(folder: epath.Path, title: str, checkpoint: str, split: Mapping[str, Any],
          names: Sequence[str], notes: Sequence[Tuple[str, str, str]]) -> str:
    """Writes `folder/report.md` from `folder/eval/metrics.json`; returns its text."""
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    text = markdown(title, checkpoint, split, metrics, names, notes)
    (folder / "report.md").write_text(text)
    return text
