"""Reading PyTorch checkpoint files without torch and without running code from them.

Formats read by `load_torch_file`:

- the `torch.save` zip archive (the default since torch 1.6): `<root>/data.pkl` is a
  pickle whose tensors refer, through persistent ids, to raw storages stored as
  `<root>/data/<key>`; `<root>/byteorder` says how they are stored;
- the legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): five
  pickles in a row (magic number, protocol version, system info, the object, the list
  of storage keys), then each storage as an int64 element count and its raw bytes.

A TorchScript archive (e.g. OpenAI CLIP's `ViT-B-16.pt`) holds code as well as data; it
is recognised and refused with a pointer to `load_torchscript_state_dict`, which needs
torch. `load_safetensors` reads safetensors files (e.g. Hugging Face CLIP). Files may be
local or gs://... (read through etils.epath).

Unpickling policy. A pickle rebuilds objects by calling globals it names; here
`find_class` never imports anything:

- an allow-list maps the globals that tensor checkpoints use onto this module's own
  code: tensor and parameter rebuilders, storage types, `collections.OrderedDict`,
  `torch.Size` (a tuple), `torch.device` (a string such as 'cuda:0'), and the harmless
  builtins pickle uses for sets, frozensets, complex numbers, slices and bytes;
- any other global resolves to an inert stand-in class. Pickle builds an instance of an
  ordinary class with NEWOBJ (`cls.__new__(cls, *args)`), then BUILD (set its state)
  and SETITEMS (a dict subclass's items); on a stand-in these only record data, so a
  config object, an `argparse.Namespace` or an `EasyDict` pickled beside the weights
  loads as a `PickledObject`. REDUCE (and INST with arguments) instead *calls* the
  global with arguments from the file -- the way to reach `os.system` or `eval` -- so
  calling a stand-in raises CheckpointFormatError naming the global.

Everything `find_class` hands out is a function without default arguments, an
immutable builtin type, or an object made for this load, so a hostile BUILD cannot
alter the reader for later loads.
"""

import io
import os
import pickle
import zipfile
from typing import Any, Dict, NamedTuple

import ml_dtypes
import numpy as np
from etils import epath

from tadax.paths import local_copy

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class CheckpointFormatError(ValueError):
    """The file cannot be read as a checkpoint; the message names the file and the reason."""


class TorchScriptArchiveError(CheckpointFormatError):
    """The file is a TorchScript archive: only `load_torchscript_state_dict` (torch) reads it."""


class _RefusedCall(Exception):
    """The pickle called a global outside the allow-list; it was not called."""


class _StandInType(type):
    """Metaclass of the stand-ins: `cls.__new__(cls, ...)` builds one, calling `cls` is refused."""

    def __call__(cls, *args, **kwargs):
        raise _RefusedCall(cls.class_name)


class PickledObject(dict, metaclass=_StandInType):
    """An instance of a class that the reader does not import, kept as inert data.

    The dict holds the instance's pickled attributes (its `__dict__` and slots) and, for
    a dict subclass, its items. `class_name` is the class's dotted name (e.g.
    'argparse.Namespace'), `args` what pickle passed to `__new__`, and `state` the
    pickled state when it was not attributes (else None).
    """
    class_name = "PickledObject"

    def __new__(cls, *args):
        self = super().__new__(cls)
        self.args, self.state = args, None
        return self

    def __setstate__(self, state):
        if (isinstance(state, tuple) and len(state) == 2
                and all(part is None or isinstance(part, dict) for part in state)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, slots)
        if isinstance(state, dict):
            self.update(state)
        else:
            self.state = state

    def __repr__(self):
        return f"{self.class_name}({dict.__repr__(self)})"


class _OrderedDict(dict):
    """An OrderedDict while unpickling (BUILD may set torch's `_metadata` on it); a dict after."""


class _StorageType(NamedTuple):
    dtype: np.dtype


def _ordered_dict(*args):
    return _OrderedDict(*args)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2: a view of a 1-D storage; numpy checks the bounds."""
    if not (type(storage) is np.ndarray and storage.ndim == 1 and storage.flags.c_contiguous):
        raise TypeError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    itemsize = storage.dtype.itemsize
    return np.ndarray(tuple(size), storage.dtype, buffer=storage, offset=offset * itemsize,
                      strides=tuple(s * itemsize for s in stride))


def _parameter_data(data, *unused):
    """torch._utils._rebuild_parameter(_with_state): the parameter's tensor."""
    return data


def _device(*args):
    """torch.device('cuda', 0) -> 'cuda:0'."""
    return ":".join(str(a) for a in args if a is not None)


def _latin1(text, encoding):
    """_codecs.encode(text, 'latin1'): how pickle protocol 2 stores bytes."""
    if encoding != "latin1":
        raise ValueError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _parameter_data,
    "torch._utils._rebuild_parameter_with_state": _parameter_data,
    "collections.OrderedDict": _ordered_dict,
    "torch.Size": tuple,
    "torch.device": _device,
    "_codecs.encode": _latin1,
}
for _builtin in (set, frozenset, complex, slice, bytes, bytearray):
    for _module in ("builtins", "__builtin__"):  # protocol 2 writes Python 2 names
        _ALLOWED[f"{_module}.{_builtin.__name__}"] = _builtin


class _Unpickler(pickle.Unpickler):
    """Globals through the allow-list (else stand-ins); storages through `read_storage`.

    `read_storage(key, dtype, numel)` returns the storage's 1-D array.
    """

    def __init__(self, file, read_storage=None):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: Dict[str, np.ndarray] = {}
        self._stand_ins: Dict[str, type] = {}

    def find_class(self, module, name):
        dotted = f"{module}.{name}"
        if dotted in _ALLOWED:
            return _ALLOWED[dotted]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if dotted not in self._stand_ins:
            self._stand_ins[dotted] = _StandInType(name, (PickledObject,), {"class_name": dotted})
        return self._stand_ins[dotted]

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel), plus a view entry in legacy files
        if not (self._read_storage and isinstance(pid, tuple) and len(pid) in (5, 6)
                and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unsupported persistent id {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views (files from torch < 0.4) are not supported")
        key, numel = str(pid[2]), pid[4]
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, pid[1].dtype, numel)
        return self._storages[key]


def _read_into(f, array: np.ndarray, what: str) -> np.ndarray:
    if f.readinto(array.view(np.uint8)) != array.nbytes:
        raise ValueError(f"{what} is shorter than its tensors need (truncated file?)")
    return array


def _load_zip(path: str, archive: zipfile.ZipFile) -> Any:
    listed = archive.namelist()
    names, root = set(listed), listed[0].split("/", 1)[0] if listed else ""
    if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
        raise TorchScriptArchiveError(
            f"{path} is a TorchScript archive (like OpenAI CLIP's .pt files), not a torch.save "
            "checkpoint; torch is needed to read this one format: use "
            "load_torchscript_state_dict(path), which imports torch")
    if f"{root}/data.pkl" not in names:
        raise CheckpointFormatError(f"{path}: a zip archive but not a torch.save checkpoint "
                                    f"(no {root}/data.pkl)")
    big_endian = (f"{root}/byteorder" in names
                  and archive.read(f"{root}/byteorder").strip() == b"big")

    def read_storage(key, dtype, numel):
        name = f"{root}/data/{key}"
        if name not in names:
            raise ValueError(f"storage {name} is missing")
        if archive.getinfo(name).file_size != numel * dtype.itemsize:
            raise ValueError(f"storage {name} has {archive.getinfo(name).file_size} bytes, "
                             f"not the {numel} x {dtype} its tensors need")
        with archive.open(name) as f:
            array = _read_into(f, np.empty(numel, dtype), f"storage {name}")
        return array.byteswap(inplace=True) if big_endian else array

    with archive.open(f"{root}/data.pkl") as f:
        return _Unpickler(f, read_storage).load()


def _load_legacy(path: str, f) -> Any:
    magic = _Unpickler(f).load()
    if magic != _LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: a pickle, but not one written by torch.save")
    protocol, sys_info = _Unpickler(f).load(), _Unpickler(f).load()
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: legacy torch.save protocol {protocol!r} unsupported")
    if not sys_info.get("little_endian", True):
        raise CheckpointFormatError(f"{path}: big-endian legacy files are not supported")
    storages: Dict[str, np.ndarray] = {}  # allocated while unpickling, filled after

    def allocate(key, dtype, numel):
        storages[key] = np.empty(numel, dtype)
        return storages[key]

    obj = _Unpickler(f, allocate).load()
    keys = [str(k) for k in _Unpickler(f).load()]
    if sorted(keys) != sorted(storages):
        raise ValueError("the storage list does not match the tensors' storages")
    for key in keys:
        numel = int.from_bytes(f.read(8), "little", signed=True)
        if numel != storages[key].size:
            raise ValueError(f"storage {key} has {numel} elements, its tensors need "
                             f"{storages[key].size} (truncated file?)")
        _read_into(f, storages[key], f"storage {key}")
    return obj


def _plain(obj, memo: Dict[int, Any]):
    """`obj` with OrderedDicts turned into dicts, recursively; shared objects stay shared."""
    if id(obj) in memo:
        return memo[id(obj)]
    if type(obj) in (dict, _OrderedDict):
        out = memo[id(obj)] = {}
        out.update((k, _plain(v, memo)) for k, v in obj.items())
    elif type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(_plain(v, memo) for v in obj)
    elif type(obj) is tuple:
        out = memo[id(obj)] = tuple(_plain(v, memo) for v in obj)
    elif isinstance(obj, PickledObject):
        out = memo[id(obj)] = obj
        obj.update((k, _plain(v, memo)) for k, v in list(obj.items()))
        obj.args, obj.state = _plain(obj.args, memo), _plain(obj.state, memo)
    else:
        out = obj
    return out


def load_torch_file(path: "str | os.PathLike") -> Any:
    """Reads a file written by `torch.save` without torch and without running its code.

    Returns the saved object (for checkpoints, a dict) with every tensor and parameter
    replaced by a numpy array of the same shape, strides and dtype; bfloat16 tensors
    become `ml_dtypes.bfloat16` arrays (not upcast). Arrays are views of their storage,
    so tensors that shared a storage share memory, as after `torch.load`.
    OrderedDicts (e.g. `state_dict()`s) become plain dicts in the same order (their
    `_metadata` is dropped); ints, floats, strings, lists, tuples, dicts, sets, bytes and
    None pass through; `torch.Size` becomes a tuple and `torch.device` a string. An
    instance of any other class becomes a `PickledObject` (see the module docstring).

    Reads the zip format (torch >= 1.6) and the legacy format. Raises
    CheckpointFormatError, naming the file, for an empty, truncated, damaged or foreign
    file, and for a pickle that calls a global outside the allow-list (e.g. 'os.system';
    it is never called); TorchScriptArchiveError for a TorchScript archive.
    """
    path = os.fspath(path)
    try:
        with epath.Path(path).open("rb") as f:
            head = f.read(2)
            f.seek(0)
            if not head:
                raise CheckpointFormatError(f"{path}: the file is empty")
            if head == b"PK":
                with zipfile.ZipFile(f) as archive:
                    obj = _load_zip(path, archive)
            elif head[0] == pickle.PROTO[0]:
                obj = _load_legacy(path, f)
            else:
                raise CheckpointFormatError(f"{path}: not a torch.save checkpoint "
                                            "(neither a zip archive nor a pickle)")
            return _plain(obj, {})
    except CheckpointFormatError:
        raise
    except _RefusedCall as e:
        raise CheckpointFormatError(
            f"{path}: the pickle calls '{e}', which is not on the allow-list of this reader "
            "(it was not called); the file may be malicious, or hold objects only torch "
            "can rebuild") from None
    except OSError as e:
        raise CheckpointFormatError(f"{path}: cannot read the file ({e})") from e
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(f"{path}: a damaged or truncated zip archive ({e})") from e
    except Exception as e:  # anything else the untrusted bytes provoke
        raise CheckpointFormatError(
            f"{path}: damaged or unsupported checkpoint ({type(e).__name__}: {e})") from e


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def load_torchscript_state_dict(path: "str | os.PathLike") -> Dict[str, np.ndarray]:
    """The state dict of a TorchScript archive (e.g. OpenAI CLIP's .pt) as numpy arrays.

    Needs torch (imported here; ImportError with instructions if it is missing) and
    loads its bytes with `torch.jit.load(..., map_location='cpu')`, which compiles the archive's
    TorchScript code: use it only on files you trust. Dtypes as in `load_torch_file`.
    """
    path = os.fspath(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a TorchScript archive; reading it needs torch, which is "
                          "not installed (pip install torch). Other checkpoints are read "
                          "without torch.") from e
    try:
        module = torch.jit.load(io.BytesIO(epath.Path(path).read_bytes()), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: torch.jit.load cannot read it ({e})") from e
    return {name: _torch_to_numpy(t) for name, t in module.state_dict().items()}


def load_safetensors(path: "str | os.PathLike") -> Dict[str, np.ndarray]:
    """A safetensors file (e.g. Hugging Face CLIP weights) as `{name: numpy array}`.

    Uses `safetensors.numpy`; bfloat16 tensors become `ml_dtypes.bfloat16` arrays.
    Raises CheckpointFormatError, naming the file, if it is missing or unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = os.fspath(path)
    try:
        with local_copy(path) as local:
            return load_file(local)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from e
