"""PyTorch `torch.save` files read with NumPy only: tensors in, arrays out.

Converting official checkpoints or torchvision weights should not need a
PyTorch install, and unpickling a downloaded file must not run its code. This
reader interprets the pickle itself (a small stack machine over
`pickletools.genops`) and knows only the names `torch.load(weights_only=True)`
allows by default: tensor and parameter rebuild functions, storage types,
dtypes, ``collections.OrderedDict``, plain containers and scalars. Any other
global is refused before anything is called, with `UnsafePthError`.

Both layouts of `torch.save` are read:

* zip (PyTorch >= 1.6): ``<name>/data.pkl`` refers to storages
  ``<name>/data/<key>``, stored uncompressed in the byte order named by
  ``<name>/byteorder`` (little when absent);
* legacy (``_use_new_zipfile_serialization=False``, old torchvision
  downloads): magic, protocol and system-info pickles, the object pickle, the
  list of storage keys, then each storage as an int64 element count and its
  little-endian bytes.

Tensors come back as NumPy arrays honouring storage offset, size and stride;
tensors that share a storage share memory, as in PyTorch. bfloat16 and float8
use `ml_dtypes`. Corrupt, truncated or foreign files raise `PthError`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickletools
import struct
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np


class PthError(ValueError):
  """The file is not a readable `torch.save` file (the message says why)."""


class UnsafePthError(PthError):
  """The pickle names something other than tensors and plain containers."""


def _short(value: Any) -> str:
  """repr for messages: one line, bounded (a pickle's values may be huge)."""
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------
# Dtypes and storage types
# ----------------------------------------------------------------------------
# torch dtype name (as pickled: GLOBAL 'torch <name>') -> NumPy dtype.
_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
    "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}
# Legacy typed storage classes (GLOBAL 'torch <name>') -> element dtype.
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
# Allowed by weights_only but without a NumPy equivalent: a clear error when used.
_NO_NUMPY = ("complex32", "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
             "qint8", "qint32", "quint8", "quint4x2", "quint2x4", "QInt8Storage", "QInt32Storage",
             "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage")


@dataclasses.dataclass(frozen=True)
class _DType:
  """A torch dtype named in the pickle."""

  name: str

  def numpy(self) -> np.dtype:
    if self.name not in _DTYPES:
      raise PthError(f"tensors of dtype torch.{self.name} have no NumPy equivalent")
    return np.dtype(_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """A storage class named in the pickle; `dtype` None: untyped (bytes)."""

  name: str
  dtype: _DType | None


@dataclasses.dataclass
class _Storage:
  """One storage's elements (1-D, native byte order); views of it share memory."""

  array: np.ndarray
  typed: bool
  big_endian: bool = False  # untyped bytes still in big-endian order
  swapped: dict = dataclasses.field(default_factory=dict)  # dtype -> native elements

  def as_dtype(self, dtype: np.dtype) -> np.ndarray:
    """Untyped bytes as `dtype` elements (swapped once per dtype when big-endian)."""
    if not self.big_endian:
      return self.array.view(dtype)
    if dtype not in self.swapped:
      self.swapped[dtype] = _native(bytearray(self.array.tobytes()), dtype, True)
    return self.swapped[dtype]


# ----------------------------------------------------------------------------
# The allowed globals: what each becomes when the pickle calls it
# ----------------------------------------------------------------------------
def _ints(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and v >= 0 for v in value):
    raise PthError(f"tensor {what} {_short(value)} is not a tuple of non-negative integers")
  return tuple(value)


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None = None
          ) -> np.ndarray:
  """The tensor (offset, size, stride in elements) over `storage`, bounds-checked."""
  if not isinstance(storage, _Storage):
    raise PthError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
  (offset,), size, stride = _ints((offset,), "offset"), _ints(size, "size"), _ints(stride, "stride")
  if len(size) != len(stride):
    raise PthError(f"tensor size {size} and stride {stride} differ in length")
  elements = storage.array
  if dtype is not None:  # an untyped storage read as `dtype` (_rebuild_tensor_v3)
    if storage.typed or elements.size % dtype.itemsize:
      raise PthError(f"a storage of {elements.nbytes} bytes cannot hold {dtype} elements")
    elements = storage.as_dtype(dtype)
  elif not storage.typed:
    raise PthError("an untyped storage is used without a dtype")
  if 0 in size:
    return np.zeros(size, elements.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= elements.size:
    raise PthError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches element "
                   f"{last} of a storage of {elements.size}")
  return np.lib.stride_tricks.as_strided(
      elements[offset:], shape=size, strides=[s * elements.itemsize for s in stride])


def _rebuild_tensor_v2(storage, offset, size, stride, *autograd_state):
  del autograd_state  # requires_grad, hooks, metadata: meaningless for arrays
  return _view(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
  del requires_grad, hooks, metadata
  if not isinstance(dtype, _DType):
    raise PthError(f"tensor dtype {_short(dtype)} is not a torch dtype")
  return _view(storage, offset, size, stride, dtype.numpy())


def _rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
  del requires_grad, hooks, state
  if not isinstance(data, np.ndarray):
    raise PthError(f"a parameter holds a {type(data).__name__}, not a tensor")
  return data


_TENSOR_REBUILDS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)
_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor (sub)class with attributes: the rebuilt tensor, attributes dropped."""
  del state
  if (not any(func is f for f in _TENSOR_REBUILDS)
      or not any(new_type is _GLOBALS[t] for t in _TENSOR_TYPES)):
    raise UnsafePthError(f"tensor subclass {_short(new_type)} rebuilt by {_short(func)}")
  return func(*args)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
  """`_codecs.encode`, which protocol-2 pickles use for bytes (latin-1 only)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePthError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
  return text.encode("latin-1")


def _bytearray(data: bytes = b"") -> bytearray:
  if not isinstance(data, (bytes, bytearray)):  # bytearray(n) would allocate n bytes
    raise PthError(f"bytearray of a {type(data).__name__}")
  return bytearray(data)


def _device(kind: str, index: int | None = None) -> str:
  return kind if index is None else f"{kind}:{index}"


_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _encode,
    "torch.Size": tuple,
    "torch.device": _device,
    "torch.Tensor": _TENSOR_TYPES[0],
    "torch.nn.parameter.Parameter": _rebuild_parameter,
    "torch._utils._rebuild_tensor": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.storage.UntypedStorage": _StorageType("UntypedStorage", None),
    **{f"torch.{n}": _DType(n) for n in (*_DTYPES, *_NO_NUMPY) if "Storage" not in n},
    **{f"torch.{n}": _StorageType(n, _DType(d)) for n, d in _STORAGES.items()},
    **{f"torch.{n}": _StorageType(n, _DType(n)) for n in _NO_NUMPY if "Storage" in n},
}
# What REDUCE may call and NEWOBJ may instantiate (identity, never by name).
_CALLABLES = tuple(v for v in _GLOBALS.values() if callable(v) and not isinstance(v, str))
_CLASSES = (collections.OrderedDict, collections.Counter, set, frozenset, _bytearray, complex,
            _rebuild_parameter)
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _find_global(module: Any, name: Any) -> Any:
  if not isinstance(module, str) or not isinstance(name, str):
    raise PthError(f"global name {_short(module)}.{_short(name)} is not text")
  full = f"{_PYTHON2_MODULES.get(module, module)}.{name}"
  if full not in _GLOBALS:
    raise UnsafePthError(
        f"it refers to {full}, which is not a tensor, storage or plain container: unpickling it "
        "could run code, so (as torch.load(weights_only=True)) only tensors and plain "
        "containers are read")
  return _GLOBALS[full]


# ----------------------------------------------------------------------------
# The pickle machine
# ----------------------------------------------------------------------------
class _Machine:
  """Runs one pickle with only the allowed globals; `persistent_load` makes storages."""

  def __init__(self, persistent_load: Callable[[Any], _Storage]):
    self.persistent_load = persistent_load
    self.stack: list[Any] = []
    self.metastack: list[list[Any]] = []
    self.memo: dict[int, Any] = {}

  def run(self, stream: io.BytesIO) -> Any:
    ops = pickletools.genops(stream)
    while True:
      try:
        op, arg, _ = next(ops)
      except StopIteration:
        raise PthError("the pickle ends without STOP") from None
      except ValueError as e:  # unknown opcode, truncated argument
        raise PthError(f"broken pickle: {e}") from e
      if op.name == "STOP":
        if len(self.stack) != 1 or self.metastack:
          raise PthError("the pickle ends with an unbalanced stack")
        return self.stack.pop()
      handler = _OPS.get(op.name)
      if handler is None:
        raise PthError(f"pickle opcode {op.name} is not used by torch.save and is not read")
      handler(self, arg)

  def push(self, value: Any) -> None:
    self.stack.append(value)  # looked up at call time: MARK and pop_mark swap `stack`

  def pop(self) -> Any:
    if not self.stack:
      raise PthError("the pickle pops an empty stack")
    return self.stack.pop()

  def top(self, kinds: tuple[type, ...], op: str) -> Any:
    if not self.stack or type(self.stack[-1]) not in kinds:
      raise PthError(f"{op} applied to something that is not a {kinds[0].__name__}")
    return self.stack[-1]

  def pop_mark(self) -> list[Any]:
    if not self.metastack:
      raise PthError("the pickle closes a MARK it never opened")
    items, self.stack = self.stack, self.metastack.pop()
    return items

  # Opcodes with effects beyond the stack.
  def mark(self, _):
    self.metastack.append(self.stack)
    self.stack = []

  def global_(self, arg: str):
    self.push(_find_global(*arg.split(" ", 1)))

  def stack_global(self, _):
    name, module = self.pop(), self.pop()
    self.push(_find_global(module, name))

  def reduce(self, _):
    args, func = self.pop(), self.pop()
    if not any(func is c for c in _CALLABLES) or not isinstance(args, tuple):
      raise UnsafePthError(f"it calls {_short(func)}, which is not an allowed tensor rebuild")
    self.push(func(*args))

  def newobj(self, _):
    args, cls = self.pop(), self.pop()
    if not any(cls is c for c in _CLASSES) or not isinstance(args, tuple):
      raise UnsafePthError(f"it instantiates {_short(cls)}, which is not a plain container")
    self.push(cls(*args))

  def build(self, _):
    state = self.pop()
    self.top((collections.OrderedDict,), "BUILD")  # a state dict's `_metadata`: dropped
    if not isinstance(state, dict):
      raise PthError(f"an OrderedDict's state is a {type(state).__name__}")

  def persid(self, _):
    self.push(self.persistent_load(self.pop()))

  def memo_put(self, index: int):
    if not self.stack:
      raise PthError("the pickle memoizes an empty stack")
    self.memo[index] = self.stack[-1]

  def memo_get(self, index: int):
    if index not in self.memo:
      raise PthError(f"the pickle refers to memo entry {index}, which it never stored")
    self.push(self.memo[index])

  def setitems(self, items: list[Any]):
    target = self.top((dict, collections.OrderedDict, collections.Counter), "SETITEMS")
    if len(items) % 2:
      raise PthError("SETITEMS with an odd number of items")
    for k, v in zip(items[::2], items[1::2]):
      target[k] = v


def _push(value: Callable[[Any], Any]) -> Callable[[_Machine, Any], None]:
  return lambda m, arg: m.push(value(arg))


def _pairs(items: list[Any]) -> dict:
  if len(items) % 2:
    raise PthError("DICT with an odd number of items")
  return dict(zip(items[::2], items[1::2]))


_OPS: dict[str, Callable[[_Machine, Any], None]] = {
    "PROTO": lambda m, arg: None, "FRAME": lambda m, arg: None,
    **{op: _push(lambda arg: arg) for op in (
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
        "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8")},
    "BYTEARRAY8": _push(bytearray),
    "NONE": _push(lambda _: None), "NEWTRUE": _push(lambda _: True),
    "NEWFALSE": _push(lambda _: False),
    "EMPTY_LIST": _push(lambda _: []), "EMPTY_DICT": _push(lambda _: {}),
    "EMPTY_TUPLE": _push(lambda _: ()), "EMPTY_SET": _push(lambda _: set()),
    "MARK": _Machine.mark,
    "POP": lambda m, arg: m.pop(), "POP_MARK": lambda m, arg: m.pop_mark(),
    "DUP": lambda m, arg: (lambda v: (m.push(v), m.push(v)))(m.pop()),
    "TUPLE": lambda m, arg: m.push(tuple(m.pop_mark())),
    "TUPLE1": lambda m, arg: m.push((m.pop(),)),
    "TUPLE2": lambda m, arg: m.push(tuple(reversed([m.pop(), m.pop()]))),
    "TUPLE3": lambda m, arg: m.push(tuple(reversed([m.pop(), m.pop(), m.pop()]))),
    "LIST": lambda m, arg: m.push(m.pop_mark()),
    "DICT": lambda m, arg: m.push(_pairs(m.pop_mark())),
    "FROZENSET": lambda m, arg: m.push(frozenset(m.pop_mark())),
    "APPEND": lambda m, arg: (lambda v: m.top((list,), "APPEND").append(v))(m.pop()),
    "APPENDS": lambda m, arg: (lambda v: m.top((list,), "APPENDS").extend(v))(m.pop_mark()),
    "ADDITEMS": lambda m, arg: (lambda v: m.top((set,), "ADDITEMS").update(v))(m.pop_mark()),
    "SETITEM": lambda m, arg: m.setitems(list(reversed([m.pop(), m.pop()]))),
    "SETITEMS": lambda m, arg: m.setitems(m.pop_mark()),
    "PUT": _Machine.memo_put, "BINPUT": _Machine.memo_put, "LONG_BINPUT": _Machine.memo_put,
    "MEMOIZE": lambda m, arg: m.memo_put(len(m.memo)),
    "GET": _Machine.memo_get, "BINGET": _Machine.memo_get, "LONG_BINGET": _Machine.memo_get,
    "GLOBAL": _Machine.global_, "STACK_GLOBAL": _Machine.stack_global,
    "REDUCE": _Machine.reduce, "NEWOBJ": _Machine.newobj, "BUILD": _Machine.build,
    "BINPERSID": _Machine.persid,
}


# ----------------------------------------------------------------------------
# File layouts
# ----------------------------------------------------------------------------
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"


def _storage_id(pid: Any, fields: int) -> tuple[_StorageType, Any, int]:
  """(type, key, numel) of a persistent id ('storage', type, key, location, numel, ...)."""
  if (not isinstance(pid, tuple) or len(pid) != fields or pid[0] not in ("storage", b"storage")
      or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int) or pid[4] < 0):
    raise PthError(f"persistent id {_short(pid)} is not a storage reference")
  return pid[1], pid[2], pid[4]


def _element_dtype(kind: _StorageType) -> np.dtype:
  return np.dtype(np.uint8) if kind.dtype is None else kind.dtype.numpy()


def _native(data: bytearray, dtype: np.dtype, big_endian: bool) -> np.ndarray:
  """`data` as elements of `dtype` in this machine's byte order."""
  if len(data) % dtype.itemsize:
    raise PthError(f"a storage of {len(data)} bytes does not divide into {dtype} elements")
  if big_endian and dtype.itemsize > 1:  # swap each scalar (each half of a complex)
    unit = dtype.itemsize // (2 if dtype.kind == "c" else 1)
    swapped = np.frombuffer(data, f">u{unit}").astype(f"=u{unit}")
    data = bytearray(swapped.tobytes())
  return np.frombuffer(data, dtype)


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise PthError("the zip archive has no single <name>/data.pkl: not a torch.save file")
    prefix = pickles[0][:-len("data.pkl")]

    def record(name: str, size: int | None = None) -> bytes:
      info = archive.getinfo(prefix + name)
      if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; bounds memory
        raise PthError(f"record {name} is compressed, which torch.save never does")
      if size is not None and info.file_size != size:
        raise PthError(f"record {name} holds {info.file_size} bytes, the pickle says {size}")
      return archive.read(info)

    names = set(archive.namelist())
    order = (record("byteorder").decode("ascii", "replace")
             if prefix + "byteorder" in names else "little")
    if order not in ("little", "big"):
      raise PthError(f"unknown byte order {order!r}")
    if prefix + "version" in names and not record("version").strip().isdigit():
      raise PthError(f"format version {record('version')[:20]!r} is not a number")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
      kind, key, numel = _storage_id(pid, 5)
      if not isinstance(key, str) or prefix + f"data/{key}" not in names:
        raise PthError(f"storage {_short(key)} is not in the archive")
      dtype = _element_dtype(kind)
      if key not in storages:
        data = bytearray(record(f"data/{key}", numel * dtype.itemsize))
        typed = kind.dtype is not None
        storages[key] = _Storage(_native(data, dtype, order == "big"), typed,
                                 big_endian=order == "big" and not typed)
      if storages[key].array.dtype != dtype:
        raise PthError(f"storage {key} is read as both {storages[key].array.dtype} and {dtype}")
      return storages[key]

    return _Machine(persistent_load).run(io.BytesIO(record("data.pkl")))


def _no_storages(pid: Any) -> _Storage:
  raise PthError(f"a header pickle refers to storage {_short(pid)}")


def _read_legacy(data: bytes) -> Any:
  """The pre-1.6 layout: pickles, then the storages' bytes (always little-endian)."""
  stream = io.BytesIO(data)
  if _Machine(_no_storages).run(stream) != _LEGACY_MAGIC:
    raise PthError("it is neither a zip archive nor a legacy torch.save file (wrong magic)")
  if _Machine(_no_storages).run(stream) != 1001:
    raise PthError("unknown legacy protocol version")
  if not isinstance(_Machine(_no_storages).run(stream), dict):
    raise PthError("legacy system information is not a dict")
  buffers: dict[Any, bytearray] = {}
  storages: dict[Any, _Storage] = {}

  def persistent_load(pid: Any) -> _Storage:
    kind, key, numel = _storage_id(pid, 6)
    dtype = _element_dtype(kind)
    if key not in buffers:
      if numel * dtype.itemsize + sum(map(len, buffers.values())) > len(data):
        raise PthError(f"storage {_short(key)} claims {numel} elements, more than the file holds")
      buffers[key] = bytearray(numel * dtype.itemsize)  # filled after the pickle
      storages[key] = _Storage(np.frombuffer(buffers[key], dtype), True)
    root, view = storages[key], pid[5]
    if root.array.dtype != dtype or len(buffers[key]) != numel * dtype.itemsize:
      raise PthError(f"storage {_short(key)} is referenced with two different types or sizes")
    if view is None:
      return root
    view_key, offset, size = view  # a storage view (PyTorch < 0.4)
    _view(root, offset, (size,), (1,))  # bounds check
    return storages.setdefault(("view", view_key),
                               _Storage(root.array[offset:offset + size], True))

  result = _Machine(persistent_load).run(stream)
  keys = _Machine(_no_storages).run(stream)
  if not isinstance(keys, list) or set(keys) != set(buffers):
    raise PthError("the list of storage keys does not match the storages the pickle uses")
  for key in keys:
    header = stream.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != len(buffers[key]) // (
        storages[key].array.itemsize):
      raise PthError(f"storage {key!r}: its size header does not match the pickle")
    chunk = stream.read(len(buffers[key]))
    if len(chunk) != len(buffers[key]):
      raise PthError(f"storage {key!r} is cut short: the file is truncated")
    buffers[key][:] = chunk
  return result


def load(path: str) -> Any:
  """What `torch.load(path, weights_only=True)` returns, with NumPy arrays for tensors.

  Raises `UnsafePthError` when the pickle names anything else (nothing is
  called), `PthError` when the file is corrupt, truncated or not a `torch.save`
  file, OSError when it cannot be opened.
  """
  with open(path, "rb") as f:
    head = f.read(len(_ZIP_MAGIC))
  try:
    if not head:
      raise PthError("the file is empty")
    if head == _ZIP_MAGIC:
      return _read_zip(path)
    with open(path, "rb") as f:
      return _read_legacy(f.read())
  except UnsafePthError as e:
    raise UnsafePthError(f"refusing to load {path}: {e}") from e
  except PthError as e:
    raise PthError(f"{path} is not a readable PyTorch file: {e}") from e
  except zipfile.BadZipFile as e:
    raise PthError(f"{path} is not a readable PyTorch file: a damaged zip archive, truncated "
                   f"or corrupt ({e})") from e
  except (ValueError, TypeError, KeyError, IndexError, EOFError, OverflowError, MemoryError,
          struct.error) as e:  # raised by a corrupt or truncated file
    raise PthError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {e})") from e
