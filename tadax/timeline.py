"""A long video as a timeline: the model's clip slid over the whole video.

`eval.py --video long.mp4 --timeline OUT` classifies every window of the video
(`tadax.data.windows`: `--window` frames every `--stride` frames, at the
video's rate or `--fps`) and writes to OUT:
  timeline.json  per window its span (seconds) and top-5 classes with their
                 probabilities; the segments; the windows' settings;
  timeline.png   the probability over time (at each window's centre) of the
                 classes that lead somewhere, the leading class as a band;
  timeline.npz   `probs` (windows, classes), `start`, `end` (seconds).
A segment is a run of consecutive windows with the same top-1 class; it ends
halfway between the centres of its last window and the next segment's first.
Decoding streams, so memory holds one window of frames and a batch of clips,
plus the scores (4 bytes per class per window), whatever the video's length.
"""

import json
from typing import Any, Callable, Dict, List, Optional, Sequence

import matplotlib
import numpy as np
from etils import epath

from tadax.data import windows as windows_lib
from tadax.data.video import VideoDecodeError, count_frames
from tadax.paths import local_copy, write_npz
from tadax.progress import Progress

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOP_K = 5
# Classes drawn in the PNG: those that lead some window, the most frequent first, then the
# highest peaks, at most this many.
MAX_PLOTTED = 8


def estimated_windows(num_frames: int, native_fps: float, spec: windows_lib.WindowSpec) -> int:
    """How many windows a video of `num_frames` frames at `native_fps` gives (an estimate
    when `spec.fps` resamples it)."""
    n = num_frames if not spec.fps else int(num_frames * spec.fps / native_fps)
    return max(1, (n - spec.window) // spec.stride + 1)


def segments_of(probs: np.ndarray, start: np.ndarray, end: np.ndarray) -> List[Dict[str, Any]]:
    """Runs of windows with the same top-1 class -> [{'start', 'end', 'class', 'windows',
    'mean_prob'}] (seconds; a boundary halfway between the neighbouring windows' centres;
    `mean_prob` the class's mean probability over the run's windows)."""
    top = probs.argmax(-1)
    centre = (start + end) / 2
    cuts = [0] + [i for i in range(1, len(top)) if top[i] != top[i - 1]] + [len(top)]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        c = int(top[a])
        out.append({"start": float(start[0]) if a == 0 else float((centre[a - 1] + centre[a]) / 2),
                    "end": float(end[-1]) if b == len(top) else float((centre[b - 1] + centre[b]) / 2),
                    "class": c, "windows": b - a, "mean_prob": float(probs[a:b, c].mean())})
    return out


def _label(c: int, class_names: Optional[Sequence[str]]) -> str:
    return class_names[c] if class_names is not None else str(c)


def plotted_classes(probs: np.ndarray) -> List[int]:
    """The classes the PNG draws (see MAX_PLOTTED)."""
    top = probs.argmax(-1)
    leading = sorted(set(top.tolist()), key=lambda c: (-int(np.sum(top == c)), c))
    peaks = [int(c) for c in np.argsort(-probs.max(0), kind="stable") if c not in leading]
    return (leading + peaks)[:min(MAX_PLOTTED, max(len(leading), 3), probs.shape[1])]


def plot_timeline(probs: np.ndarray, start: np.ndarray, end: np.ndarray,
                  segments: List[Dict[str, Any]], class_names: Optional[Sequence[str]],
                  title: str, path: epath.Path) -> None:
    """Lines of the plotted classes' probabilities at the windows' centres, and above them
    a band coloured by the leading class of each segment."""
    centre = (start + end) / 2
    classes = plotted_classes(probs)
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(classes)}
    fig, (band, ax) = plt.subplots(2, 1, figsize=(11, 4.8), sharex=True,
                                   gridspec_kw=dict(height_ratios=(1, 6)))
    for s in segments:
        band.axvspan(s["start"], s["end"], color=colours.get(s["class"], "lightgrey"))
    band.set_yticks([])
    band.set_title(title, fontsize=10)
    for c in classes:
        ax.plot(centre, probs[:, c], color=colours[c], marker="." if len(centre) < 200 else None,
                label=_label(c, class_names))
    ax.set_ylim(0, 1)
    ax.set_xlim(float(start[0]), float(end[-1]))
    ax.set_xlabel("time (s), at each window's centre")
    ax.set_ylabel("softmax probability")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def summary_lines(segments: List[Dict[str, Any]], class_names: Optional[Sequence[str]],
                  limit: int = 20) -> List[str]:
    """One line per segment (the first `limit`): span, class, mean probability, windows."""
    lines = [f"  {s['start']:8.2f} - {s['end']:8.2f} s  {_label(s['class'], class_names)}"
             f"  (p {s['mean_prob']:.2f}, {s['windows']} window{'s' if s['windows'] > 1 else ''})"
             for s in segments[:limit]]
    if len(segments) > limit:
        lines.append(f"  ... {len(segments) - limit} more segments in timeline.json")
    return lines


def run_timeline(video: str, spec: windows_lib.WindowSpec, data_cfg,
                 predict: Callable[[np.ndarray], np.ndarray], batch: int, output: str,
                 class_names: Optional[Sequence[str]] = None,
                 settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Classifies every window of `video` and writes the timeline files to `output`.

    predict: a batch `(batch, T, S, S, 3)` -> softmax probabilities `(batch, C)`.
    settings: extra fields for timeline.json (e.g. the checkpoint).
    Returns the timeline.json document. Raises `VideoDecodeError` for a bad video.
    """
    with local_copy(video) as local:
        num, native = count_frames(local)
        progress = Progress(estimated_windows(num, native, spec), unit="windows")
        items = windows_lib.stream_window_clips([(0, local)], spec, data_cfg, workers=1,
                                                max_pending=2 * batch)
        probs: List[np.ndarray] = []
        start: List[float] = []
        end: List[float] = []
        fps = spec.fps or native
        for clips, array, ends in windows_lib.window_batches(items, batch):
            for e in ends:
                if isinstance(e, windows_lib.VideoFailed):
                    raise VideoDecodeError(e.error.replace(local, str(video)))
                fps = e.fps
            if not clips:
                continue
            probs.append(np.asarray(predict(array), np.float32)[:len(clips)])
            start += [c.start for c in clips]
            end += [c.end for c in clips]
            progress.total = max(progress.total, len(start))
            progress.update(len(start))
        progress.close()
    p, s, e = np.concatenate(probs), np.asarray(start), np.asarray(end)
    segments = segments_of(p, s, e)
    doc = dict(settings or {}, video=str(video), fps=fps, window=spec.window,
               stride=spec.stride, model_frames=spec.num_frames,
               resampled=bool(spec.fps), num_windows=len(p),
               classes=list(class_names) if class_names is not None else None,
               segments=[dict(seg, label=_label(seg["class"], class_names)) for seg in segments],
               windows=[{"start": float(a), "end": float(b),
                         "top5": [{"class": int(c), "label": _label(int(c), class_names),
                                   "prob": float(row[c])}
                                  for c in np.argsort(-row, kind="stable")[:TOP_K]]}
                        for a, b, row in zip(s, e, p)])
    out = epath.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timeline.json").write_text(json.dumps(doc, indent=1))
    write_npz(out / "timeline.npz", probs=p, start=s, end=e)
    title = (f"{epath.Path(video).name}: {len(p)} windows of {spec.window} frames every "
             f"{spec.stride} at {fps:g} fps")
    plot_timeline(p, s, e, segments, class_names, title, out / "timeline.png")
    print(f"{video}: {len(p)} windows of {spec.window} frames every {spec.stride} frames at "
          f"{fps:g} fps ({s[0]:.2f}-{e[-1]:.2f} s), {len(segments)} segments:")
    for line in summary_lines(segments, class_names):
        print(line)
    print(f"timeline -> {output}")
    return doc
