"""Look inside one prediction: class scores per view and the temporal calibration applied.

`explain_video` (what `eval.py --video FILE --explain DIR` runs) writes to DIR:
  scores.png       the top-k class probabilities of every evaluation view and of
                   their aggregate (the mean of the views' softmax scores, which
                   ranks classes as eval.py's sum does);
  calibration.png  for every view, the TAdaConv kernel calibration alpha of every
                   TAdaConv (rows, input to output) at every time step (columns),
                   averaged over channels;
  explain.npz / explain.json  the plotted arrays: `probs` (V, C), `aggregate`
                   (C,), `alpha_mean` (V, blocks, T'), `blocks`, and the top-k lists.
The alphas are the ones the routing functions sow into the 'intermediates'
collection during the same forward pass that gives the scores.
"""

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import matplotlib
import numpy as np
from etils import epath

from tadax.models import layout
from tadax.paths import write_npz

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_ROUTE_SUFFIXES = ("/tadaconv/rf_func", "/dwconv_rf")


def _natural_key(path: str) -> List[List[Any]]:
    """Network order of module paths: per path component, numbers compared as numbers
    ('layers_2' < 'layers_10') and a name before its numbered twin ('tada' < 'tada2')."""
    return [[int(p) if p.isdigit() else p for p in re.split(r"(\d+)", part)]
            for part in path.split("/")]


def collect_alphas(intermediates: Dict[str, Any]) -> List[Tuple[str, np.ndarray]]:
    """The sown calibration factors -> [(module path, alpha (B, T', C))] in network order.

    A scanned stack (`scan_layers`) sows one alpha `(blocks, B, T', C)` per
    routing function; it is split into its blocks, named by their unrolled
    paths (`backbone/layers/tada/...` -> `backbone/layers_{i}/tada/...`).
    """
    found = []

    def walk(tree, path):
        for key, value in tree.items():
            if key == "alpha":
                alpha = np.asarray(value[0], np.float32)
                name = "/".join(path)
                if layout.STACKED_PATH.search(name):
                    found.extend(zip(layout.block_paths(name, len(alpha)), alpha))
                else:
                    found.append((name, alpha))
            elif isinstance(value, dict):
                walk(value, path + [key])

    walk(dict(intermediates), [])
    return sorted(found, key=lambda item: _natural_key(item[0]))


def block_label(path: str) -> str:
    """A routing function's module path -> the short label of its block in the plots."""
    name = path.removeprefix("backbone/")
    for suffix in _ROUTE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def scores_and_alphas(model, variables, views: np.ndarray) -> Tuple[np.ndarray, List[Tuple[str, np.ndarray]]]:
    """(softmax scores (V, C), [(path, alpha (V, T', C))]) of `views` (V, T, H, W, 3)."""
    def forward(v, x):
        return model.apply(v, x, mutable=["intermediates"])

    logits, state = jax.jit(forward)(variables, views)
    probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
    return probs, collect_alphas(state["intermediates"])


def _name(c: int, class_names: Optional[Sequence[str]], width: int = 28) -> str:
    name = class_names[c] if class_names is not None else str(c)
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_scores(probs: np.ndarray, aggregate: np.ndarray, view_titles: Sequence[str],
                path: epath.Path, top_k: int, class_names: Optional[Sequence[str]]) -> None:
    """Horizontal bars of each view's top-k classes and the aggregate's, on one scale; the
    aggregate's top-1 class is orange wherever it appears."""
    panels = [(t, p) for t, p in zip(view_titles, probs)]
    panels.append((f"aggregate: mean of {len(probs)} views", aggregate))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    best = int(np.argmax(aggregate))
    xmax = min(1.0, 1.25 * max(float(p.max()) for _, p in panels))   # one scale for all panels
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 0.35 * top_k * rows + 1.4 * rows),
                             squeeze=False)
    for ax, (title, p) in zip(axes.flat, panels):
        top = np.argsort(-p, kind="stable")[:top_k]
        ax.barh(range(len(top)), p[top], color=["tab:orange" if c == best else "tab:blue"
                                                for c in top])
        ax.set_yticks(range(len(top)), [_name(c, class_names) for c in top], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, xmax)
        for y, c in enumerate(top):
            ax.text(min(p[c], 0.8 * xmax) + 0.01 * xmax, y, f"{p[c]:.3f}", va="center",
                    fontsize=7)
        ax.set_title(title, fontsize=9, fontweight="bold" if title.startswith("aggregate") else None)
        ax.set_xlabel("softmax probability", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"top-{top_k} classes per view (orange: the aggregate's top-1)", fontsize=10)
    fig.tight_layout()
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_calibration(alpha_mean: np.ndarray, blocks: Sequence[str], view_titles: Sequence[str],
                     frames_per_step: int, path: epath.Path) -> None:
    """Heat maps of `alpha_mean` (V, blocks, T'): time steps across, blocks down, one per
    view, one colour scale; the values are printed in the cells of small maps."""
    v, depth, steps = alpha_mean.shape
    cols = min(4, v)
    rows = -(-v // cols)
    panel_w, panel_h = max(3.0, 0.45 * steps), max(1.8, 0.3 * depth)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 + panel_w * cols, 1.0 + panel_h * rows),
                             squeeze=False, layout="constrained")
    lo, hi = float(alpha_mean.min()), float(alpha_mean.max())
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= v:
            ax.axis("off")
            continue
        image = ax.imshow(alpha_mean[i], aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                          interpolation="nearest")
        if depth * steps <= 64:
            for (b, t), value in np.ndenumerate(alpha_mean[i]):
                light = value < lo + 0.5 * (hi - lo)
                ax.text(t, b, f"{value:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if light else "black")
        ax.set_title(view_titles[i], fontsize=9)
        ax.set_xticks(range(steps), [str(t) for t in range(steps)], fontsize=7)
        ax.set_xlabel(f"time step (= {frames_per_step} input frames)", fontsize=8)
        if i % cols == 0:
            ax.set_yticks(range(depth), blocks, fontsize=7)
        else:
            ax.set_yticks([])
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.05, label="alpha (channel mean)")
    fig.suptitle("TAdaConv kernel calibration alpha per time step and block,\n"
                 "averaged over the calibrated channels", fontsize=10)
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def view_titles(num_views: int, num_crops: int) -> List[str]:
    """'view 4: clip 1, crop 1' for view = clip * num_crops + crop."""
    return [f"view {i}: clip {i // num_crops}, crop {i % num_crops}" for i in range(num_views)]


def explain_video(video: str, views: np.ndarray, num_crops: int, model, variables,
                  output: str, *, top_k: int,
                  class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Writes scores.png, calibration.png, explain.npz and explain.json for one video file,
    named `video`, from its evaluation views `(V, T, H, W, 3)` float32 (`load_views`, V =
    clips x `num_crops`, clip-major); returns the arrays."""
    probs, alphas = scores_and_alphas(model, variables, views)
    if not alphas:
        raise ValueError("the model sowed no TAdaConv calibration (no routing functions?)")
    aggregate = probs.mean(0)
    blocks = [block_label(p) for p, _ in alphas]
    alpha_mean = np.stack([a.mean(-1) for _, a in alphas], axis=1)      # (V, blocks, T')
    titles = view_titles(len(views), num_crops)
    out = epath.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    k = min(top_k, probs.shape[1])
    plot_scores(probs, aggregate, titles, out / "scores.png", k, class_names)
    plot_calibration(alpha_mean, blocks, titles, views.shape[1] // alpha_mean.shape[2],
                     out / "calibration.png")
    arrays = {"probs": probs, "aggregate": aggregate, "alpha_mean": alpha_mean,
              "blocks": np.asarray([p for p, _ in alphas], str)}
    write_npz(out / "explain.npz", **arrays)

    def top(p):
        return [{"class": int(c), "name": _name(c, class_names, 10 ** 6), "prob": float(p[c])}
                for c in np.argsort(-p, kind="stable")[:k]]

    summary = {"video": str(video), "views": titles, "aggregate_top": top(aggregate),
               "view_top": [top(p) for p in probs], "blocks": blocks,
               "alpha_mean": alpha_mean.tolist(),
               "alpha_mean_layout": "(view, block, time step), mean over channels"}
    (out / "explain.json").write_text(json.dumps(summary, indent=1))
    return arrays
