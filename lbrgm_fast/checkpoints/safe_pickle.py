"""A pickle reader that only builds data: tensors, arrays, dicts and records of NVIDIA objects.

NVIDIA's network pickles normally rebuild their modules by `exec`-ing the Python source stored
inside them, and any pickle can name an arbitrary callable. This unpickler resolves globals only
from the explicit allow-list `_ALLOWED`; each entry maps to a function of ours that builds plain
data and checks its arguments. Anything else is refused before it is called, so reading a file
never runs code from it.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class RefusedGlobal(Exception):
    """The pickle asked for `qualname`, which is not on the allow-list (may be malicious)."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class MalformedPickle(Exception):
    """An allowed global was called with arguments that no honest checkpoint contains."""


@dataclass
class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have rebuilt.

    `module_src` is kept as text (for identification only); it is never executed.
    """

    class_name: str
    module_src: str
    state: dict[str, Any]
    version: int | None = None


class TFNetworkRecord:
    """The pickled state of a `dnnlib.tflib.network.Network` (original TensorFlow StyleGAN2)."""

    state: dict[str, Any] | None = None  # set by BUILD; None if the pickle never sent one

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise MalformedPickle("TensorFlow network state is not a dict")
        self.state = state


class _EasyDict(dict):  # noqa: D101 - a plain dict standing in for dnnlib.util.EasyDict
    pass


class _NdarrayType:
    """Stands in for `numpy.ndarray`; only our `_reconstruct` accepts it."""


class _ArrayBuilder:
    """Receives an ndarray's pickled state (BUILD) and turns it into a checked numpy array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise MalformedPickle("unexpected numpy array state")
        _version, shape, dtype, is_fortran, raw = state
        # hasobject is checked here, after BUILD, because a dtype's pickled state can set its flags.
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise MalformedPickle("numpy array with an object or unknown dtype")
        if not isinstance(raw, (bytes, bytearray)):
            raise MalformedPickle("numpy array data is not raw bytes")
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise MalformedPickle("numpy array with an invalid shape")
        flat = np.frombuffer(bytes(raw), dtype=dtype).copy()
        self.array = flat.reshape(shape, order="F" if is_fortran else "C")


def unwrap_array(obj: Any) -> Any:
    """Return the numpy array behind a rebuilt ndarray, or `obj` unchanged."""
    if isinstance(obj, _ArrayBuilder):
        if obj.array is None:
            raise MalformedPickle("numpy array without data")
        return obj.array
    return obj


# --- constructors reached through the allow-list -------------------------------------------


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise MalformedPickle("persistent object of an unknown kind")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise MalformedPickle("persistent object without class_name or state")
    module_src = meta.get("module_src")
    version = meta.get("version")
    return PersistentRecord(
        class_name=class_name,
        module_src=module_src if isinstance(module_src, str) else "",
        state=dict(state),
        version=version if isinstance(version, int) else None,
    )


_WEIGHTS_ONLY_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_torch_global(exc: BaseException) -> str | None:
    """The global named in a `torch.load(weights_only=True)` refusal, or None for other errors."""
    found = _WEIGHTS_ONLY_GLOBAL.search(str(exc))
    return found.group(1) if found else None


def _load_storage_bytes(data: Any) -> torch.TypedStorage | torch.UntypedStorage:
    """Replacement for `torch.storage._load_from_bytes`, which calls an unrestricted torch.load."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedPickle("tensor storage is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        qualname = refused_torch_global(exc)
        if qualname:
            raise RefusedGlobal(qualname) from exc
        raise MalformedPickle(f"unreadable tensor storage ({_first_line(exc)})") from exc
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise MalformedPickle("tensor storage bytes do not hold a storage")
    return storage


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    # Hooks and metadata are deliberately dropped: hooks would be callables from the file.
    del requires_grad, backward_hooks, metadata
    if isinstance(storage, torch.TypedStorage):
        dtype, untyped = storage.dtype, storage._untyped_storage
    elif isinstance(storage, torch.UntypedStorage):
        dtype, untyped = torch.uint8, storage
    else:
        raise MalformedPickle("tensor without a storage")
    if not (isinstance(storage_offset, int) and storage_offset >= 0 and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise MalformedPickle("tensor with an invalid size, stride or offset")
    if len(size) != len(stride):
        raise MalformedPickle("tensor with an invalid size, stride or offset")
    # Tensor.set_ does not bounds-check, so a lying size or stride would read memory outside the
    # storage; check that the last element addressed lies inside it.
    itemsize = torch.empty((), dtype=dtype).element_size()
    available = untyped.nbytes() // itemsize
    needed = 0 if 0 in size else storage_offset + 1 + sum((n - 1) * st for n, st in zip(size, stride))
    if needed > available:
        raise MalformedPickle(f"tensor of size {list(size)} reaches past its storage ({available} elements)")
    return torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, tuple(size), tuple(stride)).detach()


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *_state: Any) -> torch.Tensor:
    del requires_grad, backward_hooks
    if not isinstance(data, torch.Tensor):
        raise MalformedPickle("parameter without tensor data")
    return data


def _np_dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    del copy  # always copy: BUILD then mutates our copy, never numpy's shared builtin dtype
    if not isinstance(obj, str):
        raise MalformedPickle("numpy dtype from something other than a type code")
    dtype = np.dtype(obj, bool(align), True)
    if dtype.hasobject:
        raise MalformedPickle("numpy object dtype")
    return dtype


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise MalformedPickle("numpy scalar of an object or unknown dtype")
    if len(data) != dtype.itemsize:
        raise MalformedPickle("numpy scalar with the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _np_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> _ArrayBuilder:
    del shape, dtype_code  # the real shape and dtype arrive with the BUILD state
    if subtype is not _NdarrayType:
        raise MalformedPickle("numpy reconstruction of something other than ndarray")
    return _ArrayBuilder()


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise MalformedPickle("unexpected _codecs.encode call")
    return text.encode("latin1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")

_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NdarrayType,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    # Protocol < 3 pickles use Python 2 module names (the base class maps them, our override must too).
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    **{(m, "scalar"): _np_scalar for m in _NUMPY_MODULES},
    **{(m, "_reconstruct"): _np_reconstruct for m in _NUMPY_MODULES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise MalformedPickle("persistent references (a torch.save file read as a plain pickle?)")


def restricted_loads(data: bytes) -> Any:
    """Unpickle `data` building only allow-listed data types.

    Raises:
        RefusedGlobal: the pickle names a global outside the allow-list.
        MalformedPickle, pickle.UnpicklingError, EOFError, ...: corrupt or unexpected content
            (callers turn these into `CheckpointError`).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
