"""Reading PyTorch checkpoint files without torch and without running code from them.

`torch.save` (since torch 1.6) writes a zip archive: `<root>/data.pkl` is a
pickle whose tensors refer, through persistent ids, to raw storages stored
as `<root>/data/<key>`. The pickle is read by an unpickler that resolves
only an allow-list of globals (tensor and parameter rebuilders, storage
types, `collections.OrderedDict`); any other class becomes an inert
`OpaqueObject` holding its arguments and state (so a config object pickled
beside the weights still loads), and globals from modules that can act on
the system (os, subprocess, builtins' eval, ...) are refused outright.
Nothing in the file is ever called.
"""

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Dict, Tuple

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib",
                      "runpy", "pickle", "marshal", "ctypes", "code", "pty", "webbrowser",
                      "multiprocessing", "threading", "signal", "io", "pathlib", "tempfile",
                      "types", "functools", "operator", "inspect", "torch.hub")
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex,
                  "bytearray": bytearray, "range": range}


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this reader accepts; the message names the file."""


class TorchScriptArchiveError(CheckpointFormatError):
    """The file is a TorchScript archive (e.g. OpenAI CLIP's), which needs torch to read."""


class OpaqueObject:
    """Stand-in for an instance of a class this reader does not construct.

    `cls_name` is the pickled class's dotted name, `args` / `kwargs` the
    constructor arguments the pickle passed, `state` what it would have set.
    """
    cls_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"OpaqueObject({self.cls_name})"


def _opaque_class(dotted: str) -> type:
    """What an unknown global resolves to: a subclass of OpaqueObject, never the real thing."""
    return type(dotted.rsplit(".", 1)[-1], (OpaqueObject,), {"cls_name": dotted})


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
    """A strided view of a flat storage, copied into its own contiguous array."""
    itemsize = storage.dtype.itemsize
    if len(size) == 0:
        return storage[offset].copy()
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    if needed > storage.size:
        raise ValueError("tensor extends past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(st * itemsize for st in stride))
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._root, self._path = archive, root, path
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "builtins" or module.split(".")[0] in _DANGEROUS_MODULES \
                or module in _DANGEROUS_MODULES:
            raise CheckpointFormatError(
                f"{self._path}: refuses to load the global '{module}.{name}', which a "
                f"checkpoint has no reason to hold (the file may be malicious)")
        return _opaque_class(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._path}: unknown persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self._path}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            name = f"{self._root}/data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise CheckpointFormatError(f"{self._path}: storage {name} is missing") from None
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def _archive_root(archive: zipfile.ZipFile, path: str) -> str:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    roots = {n.split("/")[0] for n in names}
    if any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names):
        raise TorchScriptArchiveError(
            f"{path} is a TorchScript archive (like OpenAI CLIP's .pt files); reading its "
            "weights needs torch: install torch (pip install torch) and retry, or convert "
            "it once with torch.jit.load(path).state_dict()")
    if len(pickles) != 1 or len(roots) != 1:
        raise CheckpointFormatError(f"{path}: not a torch.save archive (no single <root>/data.pkl)")
    return pickles[0].split("/")[0]


def load_torch_file(path: "str | os.PathLike") -> Any:
    """Reads a `torch.save` zip archive without torch; tensors become numpy arrays.

    Returns the saved object (dicts, lists, numbers, strings as saved;
    OrderedDicts as OrderedDicts; bfloat16 tensors as `ml_dtypes.bfloat16`
    arrays; instances of other classes as `OpaqueObject`s).
    Raises CheckpointFormatError (naming the file) for anything else:
    missing, empty, truncated or non-zip files, pre-1.6 legacy pickles,
    TorchScript archives (`TorchScriptArchiveError`), forbidden globals.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointFormatError(f"{path}: the file is empty")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            legacy = f.read(2) == b"\x80\x02"
        hint = ("a legacy (torch < 1.6) pickle; re-save it with a recent torch"
                if legacy else "not a torch.save zip archive (or truncated)")
        raise CheckpointFormatError(f"{path}: {hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive, path)
            data = archive.read(f"{root}/data.pkl")
            return _RestrictedUnpickler(data, archive, root, path).load()
    except CheckpointFormatError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, KeyError,
            TypeError, AttributeError, IndexError) as e:
        raise CheckpointFormatError(f"{path}: damaged or unsupported checkpoint ({e})") from e


def load_torchscript_state_dict(path: "str | os.PathLike") -> Dict[str, np.ndarray]:
    """The state dict of a TorchScript archive as numpy arrays; needs torch installed."""
    try:
        import torch
    except ImportError as e:
        raise TorchScriptArchiveError(
            f"{path} is a TorchScript archive; reading it needs torch, which is not installed "
            "(pip install torch)") from e
    module = torch.jit.load(os.fspath(path), map_location="cpu")
    return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
            for k, v in module.state_dict().items()}


def load_safetensors(path: "str | os.PathLike") -> Dict[str, np.ndarray]:
    """A `.safetensors` file (e.g. Hugging Face CLIP) as `{name: numpy array}`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path}: no such file")
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from e
