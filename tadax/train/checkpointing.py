"""Train-state checkpoints of a run (Orbax `CheckpointManager`), and loading weights
from either a run or a converted model directory.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`: `state` is the whole train
state (params, batch_stats, optimizer state, step, EMA), `data` the JSON data
position `{"step": ...}` (the iterator restarts from it). WORKDIR may be local
or gs://. Saves are asynchronous and atomic (locally written to a temporary
directory, renamed when complete; on GCS committed by Orbax's
`commit_success.txt` marker), so a run killed at any moment (SIGKILL
included) leaves its previous checkpoints intact and resumes from the newest
finished one.
When to save is Orbax's decision (`save_decision_policy`): every
`every_steps` steps, at the given extra steps (validations, the last step),
when the newest checkpoint is older than `every_secs` and none is being
written (also right at the start of a new run, which proves early that the
run directory is writable), and at a multi-host preemption sync point.
Kept: the newest `keep` and the `keep_best` with the best validation metric.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
from orbax.checkpoint.checkpoint_managers import save_decision_policy as sdp


from tadax import checkpoint_io
from tadax.models import layout
from tadax.paths import user_path


class RunCheckpoints:
    """The checkpoints of one run directory.

    cfg: `config.checkpoint` (`every_steps`, `every_secs`, `keep`, `keep_best`,
    `best_metric`). every: further save intervals in steps (the validation
    interval); on_steps: further steps to save at (the last one).
    """

    def __init__(self, directory: str, cfg: ml_collections.ConfigDict,
                 every: Sequence[int] = (), on_steps: Sequence[int] = ()):
        self.directory = user_path(directory)
        metric = cfg.best_metric
        policies = [pp.LatestN(n=cfg.keep)]
        if cfg.keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[metric], reverse=False,
                                     n=cfg.keep_best, keep_checkpoints_without_metrics=False))
        saves = [sdp.FixedIntervalPolicy(n) for n in (cfg.every_steps, *every) if n]
        saves += [sdp.SpecificStepsPolicy(list(on_steps)),
                  sdp.ContinuousCheckpointingPolicy(minimum_interval_secs=int(cfg.every_secs)),
                  sdp.PreemptionCheckpointingPolicy()]
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=sdp.AnySavePolicy(saves),
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Orbax's decision for `step` (call at every step, on every host)."""
        return self.manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True at the step all hosts save at after a multi-host preemption notice."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, state: Any, data_step: int,
             metrics: Optional[Mapping[str, float]] = None) -> None:
        """Starts an asynchronous save of `state` at `step`; returns before it is written.

        Call it where `should_save(step)` said so or for a single-process
        preemption: the decision is not taken a second time.
        """
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave({"step": int(data_step)})),
            metrics=dict(metrics) if metrics else None, force=True)

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_checkpoint(directory: epath.Path, step: int, abstract_state: Any
                       ) -> Tuple[Any, Dict[str, Any]]:
    """(train state with the shardings of `abstract_state`, data position) of checkpoint
    `step` in a run's `checkpoints/` directory, read without a checkpoint manager.

    A state saved in the other layout of the blocks (`scan_layers` changed
    between runs, `tadax/models/layout.py`) is read to host memory in its
    own layout, converted, and put on the devices with those shardings.
    """
    step_dir = user_path(directory) / str(step)
    saved = layout.layout_of(state_metadata(step_dir / "state"))
    wanted = layout.layout_of(abstract_state)
    if saved is None or saved == wanted:
        item, restore_args = abstract_state, ocp.checkpoint_utils.construct_restore_args(
            abstract_state)
    else:
        item = layout.to_layout(abstract_state, saved)
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(step_dir, ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args),
            data=ocp.args.JsonRestore()))
    state = restored.state
    if item is not abstract_state:
        shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract_state)
        state = jax.device_put(layout.to_layout(state, wanted), shardings)
    return state, dict(restored.data)


def state_metadata(state_dir: epath.Path) -> Dict[str, Any]:
    """The saved tree of a checkpoint's `state` item (array metadata, no arrays read).

    Read through the item's handler: a `Checkpointer` would also look for a
    step-level `_CHECKPOINT_METADATA` inside the item and warn on every load
    that it is missing (it lives one level up, in the step directory).
    """
    return ocp.PyTreeCheckpointHandler().metadata(state_dir).tree


def finished_steps(directory: str) -> List[int]:
    """Steps of the complete checkpoints in a run's `checkpoints/` directory (none if absent),
    read without starting a checkpoint manager."""
    path = epath.Path(directory)
    return sorted(ocp.utils.checkpoint_steps(path)) if path.is_dir() else []


def _step_dir(path: str) -> Optional[epath.Path]:
    """The step directory of a run checkpoint path (run dir, checkpoints dir or step dir)."""
    path = user_path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "state").is_dir():
            return candidate
        if candidate.is_dir():
            steps = [int(d.name) for d in candidate.iterdir()
                     if d.name.isdigit() and (d / "state").is_dir()]
            if steps:
                return candidate / str(max(steps))
    return None


def load_weights(path: str, use_ema: bool = False) -> Tuple[Dict[str, Any], Optional[ml_collections.ConfigDict]]:
    """Model variables from a converted directory or a run's checkpoint -> (variables, model config).

    path: a `tadax.convert` output (`DIR/variables`), or a run directory, its
    `checkpoints/` directory or one step directory (the newest step is used).
    use_ema: take the EMA weights of a run checkpoint (CheckpointError if it has none, or
      for a converted directory, which holds one set: `convert zoo --ema` chooses it).
    Returns numpy `{'params': ..., 'batch_stats'?: ...}` (whatever the devices
    that wrote them) and the model config
    stored with a converted directory (None for run checkpoints, whose
    config is the run's).
    """
    if (user_path(path) / "variables").is_dir():
        if use_ema:
            raise checkpoint_io.CheckpointError(
                f"--ema: {path} is a converted model directory, which holds one set of "
                "weights (`python -m tadax.convert zoo --ema` converts a release's EMA "
                "weights); leave out --ema")
        return checkpoint_io.load_variables(path)
    step_dir = _step_dir(path)
    if step_dir is None:
        raise checkpoint_io.CheckpointError(
            f"{path} is neither a converted model directory (with 'variables/') nor a tadax "
            "run checkpoint (with 'checkpoints/<step>/state')")
    checkpointer = ocp.PyTreeCheckpointer()
    state_dir = step_dir / "state"
    metadata = state_metadata(state_dir)
    if use_ema and not metadata.get("ema"):
        raise checkpoint_io.CheckpointError(
            f"--ema: {step_dir} holds no EMA weights (its run trained with "
            "train.ema_decay=0); leave out --ema")
    source = "ema" if use_ema else None
    wanted = metadata[source] if source else metadata
    # Only the model variables are read: the optimizer state (twice the parameters'
    # size with AdamW) never reaches host memory.
    wanted = {k: wanted[k] for k in ("params", "batch_stats") if wanted.get(k)}
    item = {source: wanted} if source else wanted
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    tree = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=as_numpy, partial_restore=True))
    return (tree[source] if source else tree), None
