"""The original PyTorch project, from a user's checkout: its model, random weights, its steps.

Nothing of the original is part of tadax: the checkout at PATH is put on
`sys.path` and its own code builds the model (`tadaconv.models.base.builder`)
and the optimizer with the recipe's parameter groups
(`tadaconv.models.utils.optimizer.construct_optimizer`). Settings are
resolved as the original resolves them: its `configs/pool/base.yaml`, then
the file's `_BASE_*` chain (`tadax.weights.upstream`), then any overrides.

Building the model needs torch and einops. The original also imports
torchvision at module level for image-grid helpers that building and
running a model never call; where torchvision is not importable (e.g. no
build matching the installed torch), a placeholder module stands in and a
line says so.
"""

import importlib
import os
import sys
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import yaml
from etils import epath

from tadax.bench.recipes import BenchError
from tadax.weights.upstream import UpstreamConfigError, load_upstream_settings

# Files that mark a checkout of the original project.
MARKERS = ("tadaconv/models/base/builder.py", "configs/pool/base.yaml")
# The original's settings file of each model that can be compared, relative to its checkout.
SETTINGS_FILES: Dict[str, str] = {
    "tadaformer_b16": "configs/projects/tadaformer/tadaformer_b16_k400_16f.yaml",
    "tadaformer_l14": "configs/projects/tadaformer/tadaformer_l14_k400_16f.yaml",
    "tadaconvnextv2_tiny": "configs/projects/tadaconvnextv2/tadaconvnextv2_tiny_k400_16f.yaml",
    "tadaconvnextv2_small": "configs/projects/tadaconvnextv2/tadaconvnextv2_small_k400_16f.yaml",
    "tadaconvnextv2_base": "configs/projects/tadaconvnextv2/tadaconvnextv2_base_k400_16f.yaml",
}
# Import names whose pip package is named differently.
PIP_NAMES = {"yaml": "PyYAML", "cv2": "opencv-python", "PIL": "pillow"}


def check_checkout(path: str) -> epath.Path:
    """`path` as a Path if it holds the original's code and settings, else a BenchError."""
    root = epath.Path(path)
    missing = [m for m in MARKERS if not (root / m).exists()]
    if missing:
        raise BenchError(f"--against-original {path}: not a checkout of the original TAdaConv "
                         f"project (no {missing[0]})")
    return root


def _placeholder_torchvision() -> Optional[str]:
    """Registers a torchvision placeholder if the real one does not import; returns why."""
    try:
        import torchvision  # noqa: F401
        return None
    except Exception as e:  # a missing module, or a build that does not match torch
        reason = f"{type(e).__name__}: {e}"
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"torchvision is not importable here ({reason})")

    package, utils = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = unavailable
    package.utils = utils
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = package, utils
    return reason


def _forget_original() -> None:
    """Removes every module of the original's `tadaconv` package from `sys.modules`."""
    for name in [m for m in sys.modules if m == "tadaconv" or m.startswith("tadaconv.")]:
        del sys.modules[name]


def import_original(path: str) -> Tuple[Dict[str, Any], List[str]]:
    """The original's model builder and optimizer from the checkout at `path`.

    Returns ({'build_model', 'construct_optimizer'}, notes to print). A missing
    package is a BenchError naming it.
    """
    root = check_checkout(path)
    notes = []
    reason = _placeholder_torchvision()
    if reason:
        notes.append(f"torchvision not importable ({reason}); the original imports it only for "
                     "image-grid helpers, so a placeholder stands in")
    _forget_original()   # a previously imported checkout must not stand in for this one
    sys.path.insert(0, os.fspath(root))
    try:
        importlib.import_module("tadaconv.models")
        builder = importlib.import_module("tadaconv.models.base.builder")
        optimizer = importlib.import_module("tadaconv.models.utils.optimizer")
    except ModuleNotFoundError as e:
        _forget_original()   # no half-imported package left behind
        package = PIP_NAMES.get(e.name, e.name)
        raise BenchError(f"--against-original {path}: the original's code needs the Python "
                         f"package {package!r}, which is not installed (pip install {package})"
                         ) from None
    finally:
        sys.path.remove(os.fspath(root))
    module_file = epath.Path(builder.__file__).resolve()
    if not str(module_file).startswith(str(root.resolve())):
        raise BenchError(f"--against-original {path}: a 'tadaconv' package from {module_file} "
                         "was imported instead of the checkout's")
    return {"build_model": builder.build_model,
            "construct_optimizer": optimizer.construct_optimizer}, notes


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_settings(path: str, settings_file: str, overrides: Mapping[str, Any]
                     ) -> Dict[str, Any]:
    """Flat dotted settings: base.yaml < `settings_file`'s chain < `overrides`.

    settings_file: relative to the checkout (e.g.
    `configs/projects/tadaformer/tadaformer_b16_k400_16f.yaml`). The model
    runs on the CPU (`NUM_GPUS: 0`) without EMA.
    """
    root = check_checkout(path)
    if not (root / settings_file).exists():
        raise BenchError(f"--against-original {path}: no settings file {settings_file}")
    flat = _flatten(yaml.safe_load((root / "configs/pool/base.yaml").read_text()))
    try:
        flat.update(load_upstream_settings(os.fspath(root / settings_file)))
    except UpstreamConfigError as e:
        raise BenchError(str(e)) from None
    flat.update(overrides)
    flat.update({"NUM_GPUS": 0, "NUM_SHARDS": 1, "MODEL.EMA.ENABLE": False})
    return flat


class Settings:
    """Nested attribute access to flat dotted settings, as the original's Config gives."""

    def __init__(self, flat: Mapping[str, Any]):
        children: Dict[str, Dict[str, Any]] = {}
        for key, value in flat.items():
            head, dot, rest = key.partition(".")
            if dot:
                children.setdefault(head, {})[rest] = value
            else:
                setattr(self, head, value)
        for head, sub in children.items():
            setattr(self, head, Settings(sub))


def randomise_(model, seed: int, scale: float) -> None:
    """Every float parameter and buffer of a torch model moved by `scale` * N(0, 1) noise
    (running variances drawn in [0.5, 1.5]), so that no branch stays at its zero init."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator))


def state_dict_numpy(model) -> Dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


class OriginalRunner:
    """The original model with random weights, its eval forward and its train step.

    Train step: the original's AdamW with the recipe's parameter groups,
    cross-entropy with the recipe's label smoothing, forward + backward + step.
    video: `(B, T, H, W, 3)` float32 (tadax layout; transposed to `(B, 3, T, H, W)`).
    """

    def __init__(self, original: Mapping[str, Callable], settings: Mapping[str, Any],
                 video: np.ndarray, labels: np.ndarray, seed: int, scale: float):
        import torch
        self.torch = torch
        cfg = Settings(settings)
        self.model, _ = original["build_model"](cfg)
        randomise_(self.model, seed, scale)
        self.optimizer = original["construct_optimizer"](self.model, cfg)
        self.smoothing = float(settings.get("AUGMENTATION.LABEL_SMOOTHING", 0.0))
        self.video = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def eval_outputs(self) -> Tuple[np.ndarray, np.ndarray]:
        """(probabilities (B, classes), pooled features (B, D)) in eval mode."""
        self.model.eval()
        with self.torch.no_grad():
            probs, features = self.model(self.video)
        return probs.numpy(), features.numpy()

    def run_eval(self) -> None:
        self.eval_outputs()

    def run_train(self) -> None:
        self.model.train()
        preds, _ = self.model(self.video)
        loss = self.torch.nn.functional.cross_entropy(preds, self.labels,
                                                      label_smoothing=self.smoothing)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
