"""Where a compiled step spends its time: XLA's own per-op trace, grouped by model op.

`jax.profiler` records every executed XLA op (a fusion, a dot, a copy) of
a step; each compiled op carries the `op_name` of the jax operation it
came from (`transpose(jvp(VideoClassifier))/backbone/layers_3/mlp/c_fc/
dot_general`). Ops are grouped by pass (forward, or backward where the name
holds autodiff's `transpose(`), the operation and the two enclosing module
scopes, with layer and block indices folded (`layers_N`), so the table reads
"backward dot_general of mlp/c_fc: 15% of the step".
"""

import collections
import gzip
import json
import re
import tempfile
from typing import Callable, Dict, List, Tuple

import jax
from etils import epath

_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ .*?op_name=\"([^\"]*)\"")


def op_names(hlo_text: str) -> Dict[str, str]:
    """{instruction name: jax op_name} of an optimized HLO module's text."""
    names = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            names[match.group(1)] = match.group(2)
    return names


def group_key(op_name: str) -> str:
    """'BWD dot_general [mlp/c_fc]' for an op_name; indices of layers and blocks folded."""
    op_name = re.sub(r"_\d+", "_N", op_name)
    parts = op_name.split("/")
    direction = "BWD" if "transpose(" in op_name else "FWD"
    scope = "/".join(p for p in parts[-3:-1] if not p.startswith("jit(")) or "step"
    return f"{direction} {parts[-1]} [{scope}]"


def _trace_events(trace_dir: epath.Path) -> List[dict]:
    files = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    with gzip.open(files[-1].open("rb")) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile_step(run: Callable[[], None], hlo_text: str, steps: int,
                 trace_dir: str = "") -> Tuple[float, List[Tuple[str, float]]]:
    """Runs `run()` (one step, blocking) `steps` times under the profiler.

    Returns (op time per step in seconds, [(group, seconds per step)] largest first).
    The trace is kept in `trace_dir` when given (TensorBoard / Perfetto can open it).
    """
    names = op_names(hlo_text)
    with tempfile.TemporaryDirectory() as tmp:
        where = epath.Path(trace_dir or tmp)
        with jax.profiler.trace(str(where), create_perfetto_trace=True):
            for _ in range(steps):
                run()
        events = _trace_events(where)
    groups: Dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            groups[group_key(names[event["name"]])] += event["dur"] * 1e-6 / steps
    total = sum(groups.values())
    return total, sorted(groups.items(), key=lambda kv: -kv[1])
