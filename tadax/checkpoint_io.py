"""Model checkpoints on disk: an Orbax directory with the variables and the model config.

Layout of a directory (local or gs://) written by `save_variables`:
  DIR/variables/     Orbax PyTree checkpoint of `{'params': ..., 'batch_stats': ...}`
  DIR/model_config/  JSON of the model config (`tadax.models.default_model_config` fields)
so a converted or trained model can be rebuilt from the directory alone.
The variables are always stored in the unrolled layout of the blocks (the
original's names, `tadax/models/layout.py`), whatever the config's
`scan_layers`; models built with `scan_layers` convert them when loading.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from tadax.models import layout
from tadax.models.registry import complete_model_config
from tadax.paths import user_path


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or would be overwritten."""


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_variables(path: str, variables: Mapping[str, Any],
                   model_config: ml_collections.ConfigDict, overwrite: bool = False) -> None:
    """Writes `variables` (a tree of arrays) and `model_config` to the directory `path`.

    An existing `path` is refused unless `overwrite`; the new checkpoint is
    written completely beside it before it replaces the old one, so a failed
    write never destroys a good checkpoint.
    """
    path = user_path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = path.with_name(path.name + ".tmp-write")
    if tmp.exists():
        tmp.rmtree()
    tree = jax.tree_util.tree_map(np.asarray, layout.unrolled(dict(variables)))
    config_json = {k: list(v) if isinstance(v, tuple) else v
                   for k, v in model_config.to_dict().items()}
    _checkpointer().save(tmp, ocp.args.Composite(
        variables=ocp.args.PyTreeSave(tree), model_config=ocp.args.JsonSave(config_json)))
    if path.exists():
        path.rmtree()
    tmp.rename(path)


def _model_config(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
    return complete_model_config(stored)


def is_model_dir(path: str) -> bool:
    """Whether `path` is a directory written by `save_variables`."""
    return (user_path(path) / "variables").is_dir()


def read_model_config(path: str) -> ml_collections.ConfigDict:
    """The model config stored in a directory written by `save_variables` (no arrays read)."""
    if not is_model_dir(path):
        raise CheckpointError(f"{path} is not a tadax model checkpoint (no 'variables' inside)")
    restored = _checkpointer().restore(user_path(path), ocp.args.Composite(
        model_config=ocp.args.JsonRestore()))
    return _model_config(restored.model_config)


def load_variables(path: str, target: Optional[Mapping[str, Any]] = None
                   ) -> Tuple[Dict[str, Any], ml_collections.ConfigDict]:
    """Reads a directory written by `save_variables` -> (variables, model config).

    With `target` (a tree of arrays or `jax.ShapeDtypeStruct`s, shardings
    included) the arrays are restored with its shapes and shardings; without
    it they come back as numpy arrays.
    """
    path = user_path(path)
    if not (path / "variables").is_dir():
        raise CheckpointError(f"{path} is not a tadax model checkpoint (no 'variables' inside)")
    if target is None:
        restore = ocp.args.PyTreeRestore()
    else:
        restore = ocp.args.PyTreeRestore(
            item=dict(target),
            restore_args=ocp.checkpoint_utils.construct_restore_args(dict(target)))
    restored = _checkpointer().restore(path, ocp.args.Composite(
        variables=restore, model_config=ocp.args.JsonRestore()))
    return dict(restored.variables), _model_config(restored.model_config)
