"""The torch-free checkpoint reader agrees with torch.load and refuses what it must."""

import argparse
import collections
import dataclasses
import os
import pickle
import re
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from conftest import fixtures_dir
from tadax import torch_reader
from tadax.torch_reader import CheckpointFormatError, load_torch_file

torch = pytest.importorskip("torch")

_NUMPY_DTYPES = {
    torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
    torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32,
    torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
    torch.complex64: np.complex64,
}


def _assert_same(ours, theirs):
    """`ours` (load_torch_file) holds what `theirs` (torch.load) holds, in numpy form."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray)
        assert ours.dtype == _NUMPY_DTYPES[theirs.dtype] and ours.shape == tuple(theirs.shape)
        assert ours.strides == tuple(s * ours.itemsize for s in theirs.stride())
        want = theirs.detach()
        if theirs.dtype == torch.bfloat16:
            ours, want = ours.astype(np.float32), want.float()
        np.testing.assert_array_equal(ours, want.numpy())
    elif isinstance(theirs, torch.Size):
        assert type(ours) is tuple and ours == tuple(theirs)
    elif isinstance(theirs, torch.device):
        assert ours == str(theirs)
    elif isinstance(theirs, dict):
        assert type(ours) is dict and list(ours) == list(theirs)
        for k in theirs:
            _assert_same(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_same(a, b)
    else:
        assert type(ours) is type(theirs) and ours == theirs


def _fixture_names():
    names = sorted(p.name for p in fixtures_dir().glob("*.pyth"))
    return names or [pytest.param("none", marks=pytest.mark.skip(
        reason=f"no *.pyth fixtures in {fixtures_dir()} (set TADAX_FIXTURES)"))]


@pytest.mark.parametrize("name", _fixture_names())
def test_fixture_checkpoints_read_as_torch_reads_them(name):
    path = fixtures_dir() / name
    ours = load_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    assert {"epoch", "model_state", "cfg"} <= set(ours)
    assert all(isinstance(v, np.ndarray) for v in ours["model_state"].values())


def _mixed_object():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "base": base,
        "transposed": base.t(),                      # non-contiguous
        "block": base[1:3, 2:5],                     # offset into the shared storage
        "row": base[2],
        "every_other": base[:, ::2],
        "expanded": torch.ones(3, 1).expand(3, 4),   # stride 0
        "empty_tail": base[4:],
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "scalar": torch.tensor(3.5),
        "half": torch.randn(3, 2).half(),
        "bf16": torch.randn(5).bfloat16(),
        "float64": torch.randn(2, dtype=torch.float64),
        "int64": torch.tensor([1, -2, 3]),
        "int32": torch.tensor([7], dtype=torch.int32),
        "int16": torch.tensor([-7], dtype=torch.int16),
        "int8": torch.tensor([-8], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "complex": torch.tensor([1 + 2j], dtype=torch.complex64),
        "param": torch.nn.Parameter(torch.ones(2)),
        "state_dict": torch.nn.Sequential(torch.nn.Linear(2, 3),
                                          torch.nn.BatchNorm1d(3)).state_dict(),
        "nested": collections.OrderedDict(a=[torch.ones(1), {"b": (1, "x", None, 2.5)}]),
        "values": [{1, 2}, frozenset({3}), 1 - 2j, b"a\xff", b"", bytearray(b"z"),
                   slice(1, 5, 2), torch.Size([2, 3]), torch.device("cuda", 1),
                   torch.device("cpu"), True, -(2 ** 70)],
    }


@pytest.mark.parametrize("protocol", [2, 4])
def test_views_dtypes_and_plain_values_match_torch(tmp_path, protocol):
    path = tmp_path / "mixed.pth"
    torch.save(_mixed_object(), path, pickle_protocol=protocol)
    ours = load_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=False))
    assert all(np.shares_memory(ours[k], ours["base"]) for k in ("block", "transposed", "row"))
    assert ours["bf16"].dtype == ml_dtypes.bfloat16 and ours["scalar"].shape == ()


def test_legacy_format_matches_torch(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(_mixed_object(), path, _use_new_zipfile_serialization=False)
    _assert_same(load_torch_file(path), torch.load(path, weights_only=False))


def test_big_endian_archive_is_byteswapped(tmp_path):
    little, big = tmp_path / "little.pth", tmp_path / "big.pth"
    obj = {"f": torch.randn(3, 2), "bf16": torch.randn(4).bfloat16(), "i": torch.arange(5)}
    torch.save(obj, little)
    dtypes = {"0": np.float32, "1": ml_dtypes.bfloat16, "2": np.int64}  # storage keys, in order
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in item.filename:
                dtype = dtypes[item.filename.rsplit("/", 1)[1]]
                data = np.frombuffer(data, dtype).byteswap().tobytes()
            dst.writestr(item, data)
    _assert_same(load_torch_file(big), torch.load(big, weights_only=True))


def _zip_with_pickle(tmp_path, name, payload: bytes):
    """A torch.save archive whose data.pkl is replaced by `payload`."""
    good, path = tmp_path / "good.pth", tmp_path / name
    torch.save({"w": torch.ones(1)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, payload if item.filename.endswith("/data.pkl") else src.read(item))
    return path


class _Config:
    """Like the original's config object: attributes, some of them nested configs."""

    def __init__(self, **entries):
        self.__dict__.update(entries)


class _EasyDict(dict):
    def __init__(self, **entries):
        super().__init__(entries)
        self.__dict__.update(entries)


@dataclasses.dataclass(slots=True)
class _Slotted:
    depth: int


def test_data_objects_become_inert_pickled_objects(tmp_path):
    path = tmp_path / "with_cfg.pyth"
    cfg = _Config(VIDEO=_Config(NUM_CLASSES=400, KERNEL=[3, 3]),
                  args=argparse.Namespace(cfg="x.yaml"))
    torch.save({"model_state": {"w": torch.ones(2)}, "cfg": cfg, "easy": _EasyDict(lr=0.1),
                "slotted": _Slotted(12)}, path)
    ours = load_torch_file(path)
    assert isinstance(ours["cfg"], torch_reader.PickledObject)
    assert ours["cfg"].class_name == f"{__name__}._Config"
    assert ours["cfg"]["VIDEO"] == {"NUM_CLASSES": 400, "KERNEL": [3, 3]}
    assert ours["cfg"]["args"].class_name == "argparse.Namespace"
    assert ours["cfg"]["args"] == {"cfg": "x.yaml"}
    assert ours["easy"] == {"lr": 0.1} and ours["easy"].class_name.endswith("_EasyDict")
    assert ours["slotted"] == {"depth": 12}
    np.testing.assert_array_equal(ours["model_state"]["w"], np.ones(2, np.float32))


def test_classes_that_are_not_installed_still_load(tmp_path):
    # Config.__new__ (NEWOBJ) then BUILD {'DEPTH': 12}, with no module 'tadaconv' anywhere.
    path = _zip_with_pickle(tmp_path, "zoo.pyth", b"\x80\x02ctadaconv.utils.config\nConfig\n)"
                            b"\x81}X\x05\x00\x00\x00DEPTHK\x0csb.")
    cfg = load_torch_file(path)
    assert cfg.class_name == "tadaconv.utils.config.Config" and cfg == {"DEPTH": 12}
    assert "tadaconv" not in sys.modules


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _saved(tmp_path, obj):
    torch.save(obj, tmp_path / "evil.pth")
    return tmp_path / "evil.pth"


_MALICIOUS = {  # name -> (writes tmp/evil.pth, the global it calls)
    "os.system": (lambda tmp: _saved(tmp, {"x": _Evil(os.system, "touch pwned")}),
                  f"{os.system.__module__}.system"),  # posix.system on Linux
    "eval": (lambda tmp: _saved(tmp, [_Evil(eval, "open('pwned', 'w')")]), "__builtin__.eval"),
    "getattr": (lambda tmp: _saved(tmp, _Evil(getattr, "abc", "upper")), "__builtin__.getattr"),
    "hand-made REDUCE": (lambda tmp: _zip_with_pickle(
        tmp, "evil.pth", b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwnedq\x00\x85R."),
        "os.system"),
    "protocol-0 INST": (lambda tmp: _zip_with_pickle(
        tmp, "evil.pth", b"(S'touch pwned'\nios\nsystem\n."), "os.system"),
}


@pytest.mark.parametrize("case", list(_MALICIOUS))
def test_calls_outside_the_allow_list_are_refused_never_run(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    write, global_name = _MALICIOUS[case]
    path = write(tmp_path)
    refused = rf"evil\.pth: the pickle calls '{re.escape(global_name)}'"
    with pytest.raises(CheckpointFormatError, match=refused):
        load_torch_file(path)
    assert not (tmp_path / "pwned").exists()


def test_broken_and_foreign_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(1000)}, legacy, _use_new_zipfile_serialization=False)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(2))
    cases = {
        "truncated.pth": (good.read_bytes()[:700], "damaged or truncated zip"),
        "truncated_legacy.pth": (legacy.read_bytes()[:-100], "truncated"),
        "empty.pth": (b"", "empty"),
        "notes.pth": (b"hello", "not a torch.save checkpoint"),
        "plain.pkl": (pickle.dumps({"a": 1}, protocol=2), "not one written by torch.save"),
        "arrays.npz": (npz.read_bytes(), "not a torch.save checkpoint"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointFormatError, match=rf"{name}: .*{reason}"):
            load_torch_file(tmp_path / name)
    with pytest.raises(CheckpointFormatError, match=r"missing\.pth: cannot read"):
        load_torch_file(tmp_path / "missing.pth")


@pytest.mark.parametrize("change, reason", [
    (lambda name, data: None if "/data/" in name else data, "storage .*/data/0 is missing"),
    (lambda name, data: data[:-4] if "/data/" in name else data,
     "has 12 bytes, not the 4 x float32"),
])
def test_inconsistent_archives_are_reported(tmp_path, change, reason):
    good, broken = tmp_path / "good.pth", tmp_path / "broken.pth"
    torch.save({"w": torch.ones(4)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = change(item.filename, src.read(item))
            if data is not None:
                dst.writestr(item, data)
    with pytest.raises(CheckpointFormatError, match=rf"broken\.pth: .*{reason}"):
        load_torch_file(broken)


class _Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2, dtype=torch.bfloat16))

    def forward(self, x):
        return self.proj(x) * self.scale


def test_torchscript_archive_is_refused_and_read_with_torch(tmp_path, monkeypatch):
    path = tmp_path / "ViT-tiny.pt"
    module = torch.jit.script(_Tower())
    module.save(str(path))
    with pytest.raises(torch_reader.TorchScriptArchiveError,
                       match=r"ViT-tiny\.pt is a TorchScript archive.*torch is needed.*"
                             r"load_torchscript_state_dict"):
        load_torch_file(path)
    state = torch_reader.load_torchscript_state_dict(path)
    _assert_same(state, dict(module.state_dict()))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"ViT-tiny\.pt .*needs torch, which is not installed"):
        torch_reader.load_torchscript_state_dict(path)


def test_safetensors_round_trip(tmp_path):
    from safetensors.numpy import save_file
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float16),
              "c": np.array([1.5, -2], ml_dtypes.bfloat16)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    loaded = torch_reader.load_safetensors(tmp_path / "m.safetensors")
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    for name in ("bad.safetensors", "missing.safetensors"):
        with pytest.raises(CheckpointFormatError, match=rf"{name}: not a readable safetensors"):
            torch_reader.load_safetensors(tmp_path / name)
