"""Reading pickled data without running code: only numpy arrays, lists, dicts, numbers, strings and bytes.

A pickle names functions to call while it is read; ``pickle.loads`` calls whatever it names, so a
tampered dataset file runs arbitrary code. This unpickler resolves only the few names numpy needs to
rebuild an array (and the one Python 3 uses for bytes in old protocols); any other name stops the read
before anything is called.
"""

from __future__ import annotations

import _codecs
import io
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_ARRAY_NAMES = {
    "_reconstruct": _multiarray._reconstruct,  # protocols 0-4: ndarray.__reduce__
    "_frombuffer": _numeric._frombuffer,  # protocol 5
    "ndarray": np.ndarray,
    "dtype": np.dtype,
}
ALLOWED = {
    **{(module, name): obj for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                                         "numpy._core.numeric", "numpy") for name, obj in _ARRAY_NAMES.items()},
    ("_codecs", "encode"): _codecs.encode,  # bytes in a protocol-2 pickle written by Python 3
}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something outside the allowed set; nothing it names was called."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def restricted_loads(raw: bytes, encoding: str = "bytes") -> Any:
    """``pickle.loads(raw)`` that admits only numpy arrays, lists, dicts, numbers, strings and bytes.

    Raises ``RefusedPickle`` (naming what the file asked for) for anything else, before calling it.
    """
    return _Restricted(io.BytesIO(raw), encoding=encoding).load()
