"""Reading pickled data without running code: only plain numeric numpy arrays, lists, dicts, tuples, sets,
numbers, strings and bytes.

A pickle names functions to call while it is read; ``pickle.loads`` calls whatever it names, so a
tampered dataset file runs arbitrary code. Resolving only numpy's own array rebuilders is not enough
either: ``numpy.dtype`` with its ``__setstate__`` builds a dtype with an object field over the
pickle's bytes, and reading that array dereferences the attacker's pointer. So no real numpy callable
or class is ever handed to the pickle. The few names an array pickle uses resolve to stand-ins that
check their arguments (``_dtype``, ``_reconstruct``, ``_frombuffer``); arrays are then built by this
module alone, from bytes, a shape of whole numbers and one of ``PLAIN_DTYPES``, and copied. Whatever
else the pickle asks for or leaves behind (a class, a dtype on its own, an object of any other type)
stops the read with ``RefusedPickle`` before anything it names is called.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

PLAIN_DTYPES = frozenset(np.dtype(t).str[1:] for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64,
))  # 'b1', 'i1' ... 'f8': what numpy writes for these in a pickle
BYTE_ORDERS = {"<", ">", "|", "="}
MAX_DIMS = 32
MAX_DEPTH = 100  # nesting of lists, dicts and tuples; a dataset batch has 2 or 3
PLAIN_TYPES = (bool, int, float, complex, str, bytes, bytearray, type(None), np.ndarray)
ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """The pickle asks for something outside the promise; nothing it names was called."""


class _Name:
    """A class the pickle may name but never call or instantiate (``numpy.ndarray``, for ``_reconstruct``)."""

    __slots__ = ("name",)
    __hash__ = None

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NDARRAY = _Name("numpy.ndarray")


class _Dtype:
    """Stand-in for ``numpy.dtype(code)``: one of ``PLAIN_DTYPES``; its state may set the byte order, nothing else."""

    __slots__ = ("dtype",)
    __hash__ = None

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and all(part is None for part in state[2:5])):
            raise RefusedPickle("it asks for a dtype with fields or sub-arrays, and only plain numeric dtypes are rebuilt")
        order = _text(state[1], "a dtype's byte order")
        if order not in BYTE_ORDERS:
            raise RefusedPickle(f"it asks for the byte order {order!r}, which numpy does not have")
        self.dtype = self.dtype.newbyteorder(order) if order in "<>" else self.dtype


class _Array:
    """Stand-in for an array being rebuilt: ``_reconstruct`` makes it empty, its state (BUILD) fills it once."""

    __slots__ = ("array",)
    __hash__ = None

    def __init__(self, array: np.ndarray | None = None):
        self.array = array

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise RefusedPickle("it sets the content of an array twice")
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[3], (bool, int))):
            raise RefusedPickle("it gives an array a state other than (version, shape, dtype, fortran, bytes)")
        _version, shape, dtype, fortran, data = state
        self.array = _plain_array(data, dtype, shape, "F" if fortran else "C")


def _text(value: Any, what: str) -> str:
    """``value`` as text: Python 2 pickles read with encoding='bytes' give their strings as bytes."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise RefusedPickle(f"it gives a {type(value).__name__} as {what}")
    return value


def _plain_array(data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """A copy of ``data`` as an array of ``shape`` and a plain dtype; refuses anything that does not add up."""
    if not isinstance(dtype, _Dtype):
        raise RefusedPickle(f"it gives a {type(dtype).__name__} as an array's dtype")
    if isinstance(data, str):  # a Python 2 string read with encoding='latin1'
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)):
        raise RefusedPickle(f"it gives a {type(data).__name__} as an array's content, not bytes")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS and all(type(n) is int and n >= 0 for n in shape)):
        raise RefusedPickle("it gives an array a shape that is not a tuple of whole numbers")
    if math.prod(shape) * dtype.dtype.itemsize != len(data):
        raise RefusedPickle(f"it gives {len(data)} bytes to an array of shape {shape} and dtype {dtype.dtype}")
    return np.frombuffer(data, dtype.dtype).reshape(shape, order=order).copy(order="K")


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _Dtype:
    """``numpy.dtype(code, align, copy)`` for a plain numeric ``code`` only."""
    code = _text(code, "a dtype")
    if code not in PLAIN_DTYPES:
        raise RefusedPickle(f"it asks for an array of dtype {code!r}, and only plain numeric dtypes "
                            "(bool, int8-64, uint8-64, float16-64) are rebuilt")
    return _Dtype(np.dtype(code))


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _Array:
    """``numpy.core.multiarray._reconstruct``: an empty array of class ``numpy.ndarray``, filled by its state."""
    if cls is not _NDARRAY:
        raise RefusedPickle(f"it asks to rebuild a {type(cls).__name__} rather than a numpy.ndarray")
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    """``numpy.core.numeric._frombuffer`` (protocol 5): an array over the pickle's bytes."""
    if order not in ("C", "F"):
        raise RefusedPickle("it gives an array an order other than 'C' or 'F'")
    return _Array(_plain_array(buffer, dtype, shape, order))


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """``_codecs.encode(text, 'latin1')``: how Python 3 writes bytes in a protocol-2 pickle."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("it calls _codecs.encode other than to turn text into latin-1 bytes")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """``bytes()``: how Python 3 writes empty bytes (an empty array's content) in a protocol 0-2 pickle."""
    return b""


_STAND_INS = {"_reconstruct": _reconstruct, "_frombuffer": _frombuffer, "ndarray": _NDARRAY, "dtype": _dtype}
ALLOWED = {
    **{(module, name): obj for module in ARRAY_MODULES for name, obj in _STAND_INS.items()},
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedPickle(f"it asks to run {module}.{name}") from None


def _array_of(stand_in: _Array) -> np.ndarray:
    if stand_in.array is None:
        raise RefusedPickle("it leaves an array without content")
    return stand_in.array


def _finished(loaded: Any) -> Any:
    """``loaded`` with every array stand-in replaced by its array, in place; refuses any other kind of object.

    Walked without recursion and each object once, so cycles and shared references made with the
    memo cost no more than the pickle's own size.
    """
    if isinstance(loaded, _Array):
        return _array_of(loaded)
    seen: set[int] = set()
    pending = [(loaded, 0)]
    while pending:
        item, depth = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth > MAX_DEPTH:
            raise RefusedPickle(f"its data is nested deeper than {MAX_DEPTH} levels")
        pending.extend((child, depth + 1) for child in _children_with_arrays(item))
    return loaded


def _children_with_arrays(item: Any) -> list[Any]:
    """The containers and values inside ``item``, after its array stand-ins were replaced by arrays."""
    if type(item) is list:
        item[:] = [_array_of(v) if isinstance(v, _Array) else v for v in item]
        return item
    if type(item) is dict:
        for key, value in item.items():
            if isinstance(value, _Array):
                item[key] = _array_of(value)
        return [*item.keys(), *item.values()]
    if type(item) in (tuple, set, frozenset):
        if any(isinstance(v, _Array) for v in item):
            raise RefusedPickle("it puts an array inside a tuple or set")
        return list(item)
    if isinstance(item, PLAIN_TYPES):
        return []
    raise RefusedPickle(f"it leaves a {type(item).__name__} in the data, which is not an array, list, dict, number, "
                        "string or bytes")


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


def restricted_loads(raw: bytes, encoding: str = "bytes") -> Any:
    """``pickle.loads(raw)`` that admits only plain numeric numpy arrays, lists, dicts, tuples, sets, numbers,
    strings and bytes.

    Raises ``RefusedPickle`` (saying what the file asked for) before calling anything else, and
    ``ValueError`` (one line) for a pickle that is malformed in any other way.
    """
    try:
        return _finished(_Restricted(io.BytesIO(raw), encoding=encoding).load())
    except RefusedPickle:
        raise
    except Exception as err:  # noqa: BLE001 - a malformed stream fails in many ways: EOFError, TypeError, ...
        raise ValueError(f"not a readable pickle ({_one_line(err)})") from None
