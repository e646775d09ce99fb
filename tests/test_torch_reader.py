"""The torch-free checkpoint reader agrees with torch.load and refuses what it must."""

import collections
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from conftest import fixtures_dir
from tadax import torch_reader

torch = pytest.importorskip("torch")


def _assert_same(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach()
        want = theirs.float().numpy() if theirs.dtype == torch.bfloat16 else theirs.numpy()
        got = ours.astype(np.float32) if ours.dtype == ml_dtypes.bfloat16 else ours
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for k in theirs:
            _assert_same(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_same(a, b)
    else:
        assert ours == theirs


@pytest.mark.parametrize("name", sorted(p.name for p in fixtures_dir().glob("*.pyth"))
                         or [pytest.param("absent", marks=pytest.mark.skip(
                             reason=f"no fixtures in {fixtures_dir()}"))])
def test_fixture_checkpoints_read_as_torch_reads_them(name):
    path = fixtures_dir() / name
    _assert_same(torch_reader.load_torch_file(path), torch.load(path, weights_only=True))


def test_views_dtypes_and_nesting(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "transposed": base.t(),                      # non-contiguous
        "slice": base[1:3, 2:5],                     # offset into a shared storage
        "row": base[2],
        "same_storage": base,
        "half": torch.randn(3, 2).half(),
        "bf16": torch.randn(5).bfloat16(),
        "int64": torch.tensor([1, -2, 3]),
        "bool": torch.tensor([True, False]),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.ones(2)),
        "nested": collections.OrderedDict(a=[torch.ones(1), {"b": (1, "x", None)}]),
        "number": 7,
    }
    path = tmp_path / "mixed.pth"
    torch.save(obj, path)
    ours = torch_reader.load_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    assert isinstance(ours["nested"], collections.OrderedDict)


class _Config:
    def __init__(self):
        self.depth = 12
        self.name = "b16"


def test_unknown_classes_become_inert_objects(tmp_path):
    path = tmp_path / "with_cfg.pyth"
    torch.save({"model_state": {"w": torch.ones(2)}, "cfg": _Config()}, path)
    ours = torch_reader.load_torch_file(path)
    assert isinstance(ours["cfg"], torch_reader.OpaqueObject)
    assert ours["cfg"].cls_name.endswith("_Config")
    assert ours["cfg"].state == {"depth": 12, "name": "b16"}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model_state": {"w": torch.ones(1)}, "payload": _Evil()}, path)
    with pytest.raises(torch_reader.CheckpointFormatError, match=r"evil\.pth.*(posix|os)\.system"):
        torch_reader.load_torch_file(path)
    assert not (tmp_path / "pwned").exists()


def test_broken_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:700])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path, reason in [(truncated, "truncated"), (empty, "empty"), (legacy, "legacy"),
                         (text, "not a torch.save"), (tmp_path / "missing.pth", "no such file")]:
        with pytest.raises(torch_reader.CheckpointFormatError, match=reason) as info:
            torch_reader.load_torch_file(path)
        assert path.name in str(info.value)


def test_missing_storage_is_reported(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(torch_reader.CheckpointFormatError, match="broken.pth.*missing"):
        torch_reader.load_torch_file(broken)


def test_torchscript_archive_needs_torch_and_reads_with_it(tmp_path):
    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.proj(x)

    path = tmp_path / "ViT-tiny.pt"
    torch.jit.script(Tower()).save(str(path))
    with pytest.raises(torch_reader.TorchScriptArchiveError, match="TorchScript.*needs torch"):
        torch_reader.load_torch_file(path)
    state = torch_reader.load_torchscript_state_dict(path)
    assert set(state) == {"proj.weight", "proj.bias"} and state["proj.weight"].shape == (2, 3)


def test_safetensors(tmp_path):
    from safetensors.numpy import save_file
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float16)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    loaded = torch_reader.load_safetensors(tmp_path / "m.safetensors")
    assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(torch_reader.CheckpointFormatError, match="bad.safetensors"):
        torch_reader.load_safetensors(tmp_path / "bad.safetensors")


def test_pickle_module_is_not_used_for_globals():
    """The reader's allow-list never hands out the stdlib pickle machinery."""
    unpickler = torch_reader._RestrictedUnpickler(pickle.dumps(1), None, "", "x")
    with pytest.raises(torch_reader.CheckpointFormatError):
        unpickler.find_class("pickle", "loads")
    with pytest.raises(torch_reader.CheckpointFormatError):
        unpickler.find_class("builtins", "eval")
