"""Read pickled dictionaries from the internet without letting them run code.

Some model files (Geneformer's gene dictionaries, UCE's species offsets) are Python pickles, and
`pickle.load` runs whatever callable a pickle names: a tampered file on a mirror would own the
server. These files only ever hold dicts, lists, strings and numbers, some of them numpy scalars, so
`load_pickle` allows exactly the globals needed to rebuild those and refuses every other one before
it is called. Plain containers, strings and Python numbers need no globals at all; a numpy scalar is
`numpy.core.multiarray.scalar(dtype, raw_bytes)` (numpy 1.x spelling) or
`numpy._core.multiarray.scalar(...)` (numpy 2.x), with `numpy.dtype` for its dtype, and pickles of
protocol 2 wrap raw bytes in `_codecs.encode`.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from czb_core.errors import WeightsError

try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _SCALAR
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _SCALAR  # type: ignore[no-redef]  # numpy 1.x only

# dtype kinds a pickled numpy scalar may have: bool, ints, floats, complex, bytes, str (never object)
_SCALAR_KINDS = frozenset("biufcSU")


class UnsafePickleError(WeightsError):
    """A pickle asked for a global outside the allow-list (or a persistent id); nothing was called."""


def _numpy_scalar(dtype: np.dtype, *data: Any) -> Any:
    """numpy's scalar reconstructor, restricted to plain numeric and text dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SCALAR_KINDS or dtype.hasobject:
        raise UnsafePickleError(f"refusing a numpy scalar of dtype {dtype!r} (only numbers and text are allowed)")
    return _SCALAR(dtype, *data)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol 2 uses it to carry bytes; only the latin-1 form is accepted."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only reachable callables are `ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this file may only hold dicts, lists, strings and numbers"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle persistent id: this file may only hold plain data")


def load_pickle(path: str | Path) -> Any:
    """The object pickled in `path`, rebuilt with `RestrictedUnpickler`.

    Raises `UnsafePickleError` (a `WeightsError`) for a forbidden global and `WeightsError` for a
    file that is not a readable pickle (truncated download, wrong file); both name the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path.name}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise WeightsError(
            f"{path.name} cannot be read as a pickle ({type(exc).__name__}: {exc}); the file may be truncated "
            "or corrupt: delete its cache entry and download it again"
        ) from exc
