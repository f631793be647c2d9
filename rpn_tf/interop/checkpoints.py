"""Reading PyTorch checkpoints (``.pth``) and ``.safetensors`` files into NumPy arrays — without torch, and without
running any code a file carries.

A ``.pth`` file written by ``torch.save(model.state_dict(), path)`` is a pickle whose tensors point at raw storages:
since torch 1.6 a zip archive (``<name>/data.pkl`` plus one ``<name>/data/<key>`` file per storage), before that a
sequence of pickles followed by the raw bytes ("legacy" format — torchvision's 2019 COCO checkpoints are of that
age). Unpickling normally imports and calls whatever the file names; here a restricted unpickler allows only what a
state dict is built of (``collections.OrderedDict``, torch's tensor-rebuild functions and storage types) and builds
NumPy arrays from the storages itself. Anything else — a whole pickled model, an optimizer with its classes, a
``Namespace`` — is refused with a ``ValueError`` naming the global and saying what to save instead.

``.safetensors`` (Hugging Face's format: an 8-byte header length, a JSON header, raw little-endian data) is read
directly too.

``load_state_dict(path)`` → ``{name: numpy array}`` in the file's order.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np

# torch's storage types (the legacy typed names, still written by torch 2.x) → NumPy dtypes
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _bfloat16_to_float32(raw):
    """bfloat16 (stored as uint16) → float32: the upper 16 bits of a float32."""
    return (np.asarray(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _frombuffer(data, dtype, count=-1):
    if dtype == "bfloat16":
        return _bfloat16_to_float32(np.frombuffer(data, np.dtype("<u2"), count=count))
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<"), count=count)


class _StorageType:
    """A torch storage class named in the pickle (``torch.FloatStorage``…): only its dtype matters."""

    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _LazyTensor:
    """A tensor of the legacy format, rebuilt once its storage's bytes (which follow the pickle) are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _as_array(storage, offset, size, stride):
    """``storage[offset:]`` viewed with torch's ``size`` / ``stride`` (in elements), copied — after checking that
    the view lies inside the storage (a crafted file's negative or oversized strides would otherwise read memory
    outside it)."""
    storage = np.asarray(storage)
    try:
        offset, size, stride = int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    except (TypeError, ValueError) as error:
        raise ValueError(f"a tensor has a malformed size / stride / offset ({error})") from error
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride) or len(size) != len(stride):
        raise ValueError(f"a tensor has a negative or mismatched size {size} / stride {stride} / offset {offset} "
                         "(a corrupt or crafted checkpoint)")
    if not size:
        if offset >= storage.size:
            raise ValueError(f"a scalar tensor at offset {offset} lies past its storage of {storage.size} elements")
        return np.array(storage[offset])  # a 0-d array
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(f"a tensor of size {size} / stride {stride} at offset {offset} runs past its storage of "
                         f"{storage.size} elements (a truncated or corrupt checkpoint)")
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride)).copy()


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict and nothing else: ``find_class`` allows only the names a state dict is made of."""

    def __init__(self, file, storage_of, lazy=False):
        super().__init__(file)
        self._storage_of, self._lazy, self._storages = storage_of, lazy, {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad=False, hooks=None, *rest: data
        raise ValueError(f"the checkpoint holds {module}.{name}, which is not part of a tensor state dict; rpn-tf "
                         "reads weights without running pickled code: save the weights alone "
                         "(torch.save(model.state_dict(), path)) or as .safetensors")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise ValueError(f"the checkpoint has an unknown persistent id {pid!r} (not a tensor storage)")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"the checkpoint's storage {key} has no known type ({storage_type!r})")
        if key not in self._storages:
            self._storages[key] = self._storage_of(key, storage_type.dtype, numel)
        return self._storages[key]

    def _rebuild_tensor(self, storage, offset, size, stride, *rest):
        if self._lazy:
            return _LazyTensor(storage, int(offset), size, stride)
        return _as_array(storage, int(offset), size, stride)


def _flatten(value, prefix=""):
    """The ``{name: array}`` of a state dict, or of ``{"model": state_dict}`` / ``{"state_dict": ...}`` wrappers."""
    if isinstance(value, dict):
        arrays = {key: item for key, item in value.items() if isinstance(item, np.ndarray)}
        if arrays:
            return {prefix + key: item for key, item in value.items() if isinstance(item, np.ndarray)}
        for wrapper in ("model", "state_dict", "model_state_dict"):
            if isinstance(value.get(wrapper), dict):
                return _flatten(value[wrapper], prefix)
    raise ValueError("the checkpoint holds no tensor state dict (expected {name: tensor}, as torch.save("
                     "model.state_dict(), path) writes)")


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name == "data.pkl" or name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch zip checkpoint holds one */data.pkl; found {pickles}")
        prefix = pickles[0][:-len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")

        def storage_of(key, dtype, numel):
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ValueError(f"{path}: storage {key} is missing from the archive (a truncated checkpoint)")
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            if numel < 0 or archive.getinfo(member).file_size < numel * itemsize:
                raise ValueError(f"{path}: storage {key} holds {archive.getinfo(member).file_size} bytes, "
                                 f"{numel * itemsize} expected")  # checked before reading (no zip bomb)
            with archive.open(member) as data:
                return _frombuffer(data.read(numel * itemsize), dtype, numel)

        return _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), storage_of).load()


def _load_legacy(path):
    """torch < 1.6: magic, protocol, system info, the state dict (storages by key), the storage keys, then each
    storage as an int64 element count and its raw bytes."""
    with open(path, "rb") as file:
        restricted = lambda: _StateDictUnpickler(file, None)  # noqa: E731  (headers: plain values only)
        if restricted().load() != _LEGACY_MAGIC or restricted().load() != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a torch checkpoint (neither a zip archive nor the legacy format)")
        info = restricted().load()
        if not isinstance(info, dict) or not info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        pending = {}

        def storage_of(key, dtype, numel):
            pending[key] = (dtype, numel, [])
            return pending[key]

        state = _StateDictUnpickler(file, storage_of, lazy=True).load()
        keys = restricted().load()
        arrays = {}
        for key in keys:
            key = str(key)
            header = file.read(8)
            if len(header) < 8 or key not in pending:
                raise ValueError(f"{path}: storage {key} is missing or the file is truncated")
            count = struct.unpack("<q", header)[0]
            if count < 0:
                raise ValueError(f"{path}: storage {key} declares {count} elements (a corrupt checkpoint)")
            dtype, numel, _ = pending[key]
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            data = file.read(count * itemsize)
            if len(data) < count * itemsize or count < numel:
                raise ValueError(f"{path}: storage {key} is truncated")
            arrays[key] = _frombuffer(data, dtype, count)
    by_identity = {id(storage): arrays[key] for key, storage in pending.items() if key in arrays}

    def materialize(value):
        if isinstance(value, _LazyTensor):
            if id(value.storage) not in by_identity:
                raise ValueError(f"{path}: a tensor's storage was never written (a truncated checkpoint)")
            return _as_array(by_identity[id(value.storage)], value.offset, value.size, value.stride)
        if isinstance(value, dict):
            out = collections.OrderedDict((key, materialize(item)) for key, item in value.items())
            if hasattr(value, "_metadata"):
                out._metadata = value._metadata
            return out
        return value

    return materialize(state)


def _load_safetensors(path):
    with open(path, "rb") as file:
        header_size = file.read(8)
        if len(header_size) < 8:
            raise ValueError(f"{path}: too short for a .safetensors file")
        (length,) = struct.unpack("<Q", header_size)
        if length > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: its header length {length} exceeds the file (not a .safetensors file?)")
        try:
            header = json.loads(file.read(length))
        except ValueError as error:
            raise ValueError(f"{path}: unreadable .safetensors header ({error})") from error
        data = file.read()
    arrays = collections.OrderedDict()
    entries = sorted(((name, spec) for name, spec in header.items() if name != "__metadata__"),
                     key=lambda item: item[1]["data_offsets"][0])
    for name, spec in entries:
        dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has the unsupported dtype {spec.get('dtype')!r}")
        begin, end = spec["data_offsets"]
        shape = tuple(int(n) for n in spec["shape"])
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if end > len(data) or end - begin != int(np.prod(shape)) * itemsize:
            raise ValueError(f"{path}: tensor {name} of shape {shape} does not fit its byte range {begin}..{end}")
        arrays[name] = _frombuffer(data[begin:end], dtype).reshape(shape).copy()
    return arrays


def load_state_dict(path):
    """``{name: numpy array}`` of a ``.pth`` checkpoint (zip or legacy format, a bare state dict or one under
    ``"model"`` / ``"state_dict"``) or a ``.safetensors`` file, read without torch and without running pickled code.
    Errors (``ValueError``) name the file and the problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        head = file.read(4)
    try:
        if path.endswith(".safetensors"):
            return _load_safetensors(path)
        if head == b"PK\x03\x04":
            return _flatten(_load_zip(path))
        if head[:1] == b"\x80":
            return _flatten(_load_legacy(path))
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            struct.error, OverflowError, MemoryError) as error:
        raise ValueError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from error
    raise ValueError(f"{path}: neither a torch checkpoint (.pth: zip or legacy pickle) nor .safetensors")
