"""`models.pth_reader`: torch.save files read without PyTorch.

Parity tests write files with PyTorch and compare every array and dtype with
`torch.load(weights_only=True)` (skipped without torch). The refusal tests
write their pickles by hand and run without torch.
"""

import collections
import io
import os
import pickle
import pickletools
import re
import shlex
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from cmfl_jax.models import pth_reader

# torch dtype name -> the NumPy dtype the reader must return.
WANT_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
               "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32,
               "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "complex64": np.complex64,
               "uint16": np.uint16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn}


def saved_objects(torch, legacy: bool) -> dict:
  """What the parity tests save: every storage type, views, shared storages, nesting."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  linear = torch.nn.Linear(3, 2)
  objects = {
      "float32": base, "transposed": base.t(), "strided": base[1:, ::2], "row": base[2],
      "expanded": torch.randn(1, 3, generator=g).expand(4, 3), "empty": torch.zeros(0, 3),
      "float64": torch.randn(3, dtype=torch.float64, generator=g),
      "float16": torch.randn(2, 3, generator=g).half(),
      "bfloat16": torch.randn(5, 2, generator=g).to(torch.bfloat16).t(),
      "int64": torch.arange(-3, 9).reshape(3, 4)[:, 1:], "int32": torch.arange(4).int(),
      "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
      "uint8": torch.arange(250, 256).byte(),
      "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(7),
      "complex64": torch.randn(3, dtype=torch.complex64, generator=g),
      "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
      "state_dict": linear.state_dict(),  # OrderedDict with _metadata
      "nested": {"list": [1, 2.5, "three", None, True, (base[0, :2], b"bytes")],
                 "tuple": (torch.ones(2, dtype=torch.int64), {"deep": [base[:, 0]]}),
                 "set": {1, 2}, "complex": 1 + 2j},
  }
  if not legacy:  # serialized as untyped storage + dtype (_rebuild_tensor_v3)
    objects["uint16"] = torch.arange(3).to(torch.uint16)
    objects["float8_e4m3fn"] = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
  return objects


def assert_same(got, want, torch, where="file"):
  """`got` (the reader's) holds what `want` (torch.load's) holds, arrays for tensors."""
  if isinstance(want, torch.Tensor):
    assert isinstance(got, np.ndarray), where
    name = str(want.dtype).removeprefix("torch.")
    assert got.dtype == np.dtype(WANT_DTYPES[name]), where
    assert got.shape == tuple(want.shape), where
    as_numpy = (want.float() if name in ("bfloat16", "float8_e4m3fn")
                else want.to(torch.int32) if name == "uint16" else want).detach().numpy()
    np.testing.assert_array_equal(np.asarray(got).astype(as_numpy.dtype), as_numpy, err_msg=where)
  elif isinstance(want, dict):
    assert type(got) is type(want) and list(got) == list(want), where
    for key in want:
      assert_same(got[key], want[key], torch, f"{where}[{key!r}]")
  elif isinstance(want, (list, tuple)):
    assert type(got) is type(want) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      assert_same(g, w, torch, f"{where}[{i}]")
  else:
    assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_matches_torch_load(tmp_path, legacy):
  torch = pytest.importorskip("torch")
  path = str(tmp_path / "objects.pth")
  torch.save(saved_objects(torch, legacy), path, _use_new_zipfile_serialization=not legacy)
  got = pth_reader.load(path)
  assert_same(got, torch.load(path, weights_only=True), torch)
  # Tensors that share a storage share memory, as in PyTorch.
  got["float32"][1, 2] = 1234.0
  assert got["transposed"][2, 1] == 1234.0 and got["strided"][0, 1] == 1234.0


def big_endian_copy(src: str, dst: str) -> None:
  """`src` (a little-endian zip torch.save) as a big-endian machine writes it:
  byteorder 'big', each element of each storage byte-swapped."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    pickled = zin.read(next(n for n in zin.namelist() if n.endswith("/data.pkl")))
    itemsize = storage_itemsizes(pickled)
    for info in zin.infolist():
      data = zin.read(info)
      rest = info.filename.partition("/")[2]
      if rest == "byteorder":
        data = b"big"
      elif rest.startswith("data/"):  # KeyError: a storage the parse below missed
        unit = itemsize[rest[5:]]
        data = np.frombuffer(data, f"<u{unit}").astype(f">u{unit}").tobytes()
      zout.writestr(info, data)


def storage_itemsizes(pickled: bytes) -> dict:
  """storage key -> element size, from a data.pkl whose storages each have their
  own type (typed storages name it; untyped ones get the dtype of their tensor)."""
  typed = {"FloatStorage": 4, "LongStorage": 8, "HalfStorage": 2, "UntypedStorage": None}
  dtypes = {"uint16": 2}
  out, kind, untyped_key = {}, None, None
  for op, arg, _ in pickletools.genops(pickled):
    name = arg.split(" ")[1] if op.name == "GLOBAL" else None
    if name in typed:
      kind = name
    elif name in dtypes and untyped_key:
      out[untyped_key], untyped_key = dtypes[name], None
    elif op.name == "BINUNICODE" and kind and arg.isdigit():
      if typed[kind] is None:
        untyped_key = arg
      else:
        out[arg] = typed[kind]
      kind = None
  return out


def test_big_endian_file_matches_torch_load(tmp_path):
  torch = pytest.importorskip("torch")
  little, big = str(tmp_path / "little.pth"), str(tmp_path / "big.pth")
  base = torch.randn(3, 4)
  objects = {"f32": base, "view": base[:, 1:].t(), "i64": torch.arange(-2, 4),
             "f16": torch.randn(5).half(), "u16": torch.tensor([1, 258, 65535]).to(torch.uint16)}
  torch.save(objects, little)
  big_endian_copy(little, big)
  got = pth_reader.load(big)
  assert_same(got, objects, torch)  # the values saved
  assert got["f32"].dtype.isnative and got["u16"].dtype.isnative
  want = torch.load(big, weights_only=True)  # it does not swap untyped (v3) storages
  assert_same({k: got[k] for k in want if k != "u16"}, {k: want[k] for k in want if k != "u16"},
              torch)


# ----------------------------------------------------------------------------
# Files that would run code, and broken files
# ----------------------------------------------------------------------------
class _RunsCode:
  """Unpickling this calls `func(*args)`: what a malicious checkpoint does."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def zip_file(path: str, pickled: bytes) -> str:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/version", "3\n")
    z.writestr("archive/byteorder", "little")
  return path


def legacy_file(path: str, pickled: bytes) -> str:
  header = b"".join(pickle.dumps(x, protocol=2) for x in (
      0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
  with open(path, "wb") as f:
    f.write(header + pickled + pickle.dumps([], protocol=2))
  return path


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("layout", [zip_file, legacy_file], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", ["system", "open"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, protocol, layout, payload):
  marker = tmp_path / "executed"
  attack = (_RunsCode(os.system, f"touch {shlex.quote(str(marker))}") if payload == "system"
            else _RunsCode(open, str(marker), "w"))
  pickled = pickle.dumps({"weight": [1.0, 2.0], "state": collections.OrderedDict(x=attack)},
                         protocol=protocol)
  path = layout(str(tmp_path / "evil.pth"), pickled)
  with pytest.raises(pth_reader.UnsafePthError,
                     match=rf"refusing to load .*evil\.pth: it refers to \w+\.{payload}"):
    pth_reader.load(path)
  assert not marker.exists()
  ran = pickle.loads(pickled)["state"]["x"]  # the payload is real: plain unpickling runs it
  assert marker.exists()
  if payload == "open":
    ran.close()


def test_plain_pickles_without_tensors_load(tmp_path):
  """Containers and scalars only (no torch needed): what weights_only accepts."""
  obj = {"a": [1, -2**70, 2.5, None, True, "s", b"b", (1, 2)], "o": collections.OrderedDict(z=1),
         "f": frozenset({3}), "c": 2j}
  for layout, protocol in ((zip_file, 2), (legacy_file, 4)):
    path = layout(str(tmp_path / f"plain{protocol}.pth"), pickle.dumps(obj, protocol=protocol))
    assert pth_reader.load(path) == obj


def test_legacy_storages_cannot_claim_more_than_the_file(tmp_path):
  """Many small references to big storages would allocate far more than the
  file holds (a memory bomb): refused while reading the pickle."""
  torch = pytest.importorskip("torch")

  class Storage:
    def __init__(self, key, numel):
      self.key, self.numel = key, numel

  class Tensor:
    def __init__(self, storage):
      self.storage = storage

    def __reduce__(self):
      return torch._utils._rebuild_tensor_v2, (
          self.storage, 0, (1,), (1,), False, collections.OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, None)
      return None

  def write(n: int) -> str:
    body = io.BytesIO()
    Pickler(body, protocol=2).dump([Tensor(Storage(str(i), 1000)) for i in range(n)])
    path = legacy_file(str(tmp_path / f"claims{n}.pth"), body.getvalue())
    with open(path, "ab") as f:
      f.write(bytes(8192))  # room for a few claims
    return path

  with pytest.raises(pth_reader.PthError, match="storage keys does not match"):
    pth_reader.load(write(1))  # 4 kB claimed, within the file: read on, then its key is missing
  with pytest.raises(pth_reader.PthError, match="claims 1000 elements, more than the file holds"):
    pth_reader.load(write(100))  # 100 x 4 kB claimed by a ~14 kB file


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
  torch = pytest.importorskip("torch")
  tmp = tmp_path_factory.mktemp("good")
  objects = {"w": torch.randn(64, 8), "b": torch.randn(8)}
  paths = {"zip": str(tmp / "zip.pth"), "legacy": str(tmp / "legacy.pth")}
  torch.save(objects, paths["zip"])
  torch.save(objects, paths["legacy"], _use_new_zipfile_serialization=False)
  return {k: Path(p).read_bytes() for k, p in paths.items()}


def _flip_storage_byte(data: bytes) -> bytes:
  """One byte of the first storage changed: the zip CRC no longer matches."""
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    info = next(i for i in z.infolist() if "/data/" in i.filename)
  name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
  start = info.header_offset + 30 + name_len + extra_len  # past the local header
  return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1:]


def _shrink_storage_record(data: bytes) -> bytes:
  """A storage record shorter than the tensors on it (a rewritten zip)."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
    for info in zin.infolist():
      body = zin.read(info)
      zout.writestr(info, body[:16] if "/data/" in info.filename else body)
  return out.getvalue()


def _grow_tensor(data: bytes) -> bytes:
  """The (64, 8) tensor on a 512-element storage claims (127, 8): it would read past it."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
    for info in zin.infolist():
      body = zin.read(info)
      if info.filename.endswith("/data.pkl"):
        assert body.count(b"K@K\x08\x86") == 1  # BININT1 64, BININT1 8, TUPLE2
        body = body.replace(b"K@K\x08\x86", b"K\x7fK\x08\x86")
      zout.writestr(info, body)
  return out.getvalue()


BROKEN = {
    "zip cut in half": ("zip", lambda d: d[:len(d) // 2], "damaged zip archive, truncated"),
    "zip storage byte flipped": ("zip", _flip_storage_byte, "damaged zip .*CRC"),
    "zip storage record too short": ("zip", _shrink_storage_record, "holds 16 bytes"),
    "zip tensor beyond its storage": ("zip", _grow_tensor, "reaches element 1015 of a storage"),
    "legacy cut in the data": ("legacy", lambda d: d[:-100], "truncated"),
    "legacy cut in the pickle": ("legacy", lambda d: d[:200], "pickle"),
    "empty file": ("zip", lambda d: b"", "the file is empty"),
    "text file": ("zip", lambda d: b"not a checkpoint\n" * 4, "broken pickle"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_give_a_clear_error(tmp_path, good_files, case):
  layout, damage, why = BROKEN[case]
  path = tmp_path / "broken.pth"
  path.write_bytes(damage(good_files[layout]))
  with pytest.raises(pth_reader.PthError) as info:
    pth_reader.load(str(path))
  message = str(info.value)
  assert f"{path} is not a readable PyTorch file" in message and "\n" not in message
  assert re.search(why, message), message
  assert not isinstance(info.value, pth_reader.UnsafePthError)
