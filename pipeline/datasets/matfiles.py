"""MATLAB v5 annotation files (Stanford Dogs lists, Stanford Cars annotations) read safely.

``scipy.io.loadmat`` is called without ``squeeze_me``, so every variable keeps MATLAB's
shape: a cell array is an object array of N x 1 or 1 x N cells, a struct array a record
array, and each cell or field holds a small array (a 1 x 1 number, a 1 x L char array
read as one string, an empty array for ''). The helpers here unwrap exactly one value
per cell or field and name the file, the variable and the 1-based entry of every problem
(``lists/train_list.mat: entry 17: file_list is not text``). A file that is not a
readable MATLAB v5 file (v7.3 is HDF5) is refused in one line naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from pipeline.errors import DatasetError


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class MatFile:
    """The variables of one .mat file under a dataset root, with checked accessors."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        path = Path(root) / name
        if not path.is_file():
            raise DatasetError(f"{name}: missing in {root}")
        try:
            self.variables: dict[str, Any] = scipy.io.loadmat(
                path, squeeze_me=False, struct_as_record=True, chars_as_strings=True
            )
        except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
            raise DatasetError(
                f"{name}: a MATLAB v7.3 (HDF5) file; save it as a v5 .mat file (save -v7)"
            ) from None
        except OSError as exc:
            raise DatasetError(f"{name}: cannot read ({exc.strerror or _short(exc)})") from None
        except Exception as exc:  # loadmat raises many kinds on a damaged file
            raise DatasetError(f"{name}: not a readable MATLAB .mat file ({_short(exc)})") from None

    def error(self, entry: int, message: str) -> DatasetError:
        """A DatasetError naming this file and a 1-based entry."""
        return DatasetError(f"{self.name}: entry {entry}: {message}")

    def has(self, variable: str) -> bool:
        """Whether the file holds ``variable``."""
        return variable in self.variables

    def vector(self, variable: str) -> list[Any]:
        """The entries of a 1 x N or N x 1 variable (cells, numbers or structs), in order."""
        if variable not in self.variables:
            found = sorted(k for k in self.variables if not k.startswith("__"))
            raise DatasetError(
                f"{self.name}: has no variable '{variable}' (it holds: {', '.join(found) or 'none'})"
            )
        value = self.variables[variable]
        if not isinstance(value, np.ndarray) or value.ndim > 2 or min(value.shape, default=0) > 1:
            shape = " x ".join(str(n) for n in getattr(value, "shape", ())) or "scalar"
            raise DatasetError(
                f"{self.name}: {variable} must be a 1 x N or N x 1 array, found {shape}"
            )
        return list(value.ravel())

    def structs(self, variable: str, fields: tuple[str, ...]) -> list[Any]:
        """The records of a struct array (or of a cell array of 1 x 1 structs), fields checked."""
        entries = [_one_struct(entry) for entry in self.vector(variable)]
        for number, entry in enumerate(entries, start=1):
            names = getattr(getattr(entry, "dtype", None), "names", None)
            if names is None:
                raise self.error(number, f"{variable} is not a struct")
            missing = [field for field in fields if field not in names]
            if missing:
                raise self.error(
                    number,
                    f"{variable} has no field {', '.join(repr(f) for f in missing)} "
                    f"(its fields: {', '.join(names)})",
                )
        return entries

    def text(self, value: Any, entry: int, what: str) -> str:
        """One string from a cell or field (a char array); '' for an empty one."""
        value = _unwrap(value)
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size <= 1:
            return str(value.ravel()[0]) if value.size else ""
        raise self.error(entry, f"{what} is not text (found {_describe(value)})")

    def number(self, value: Any, entry: int, what: str) -> float:
        """One finite number from a cell, field or numeric array element."""
        value = _unwrap(value)
        if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iufb":
            value = value.ravel()[0]
        if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
            number = float(value)
            if math.isfinite(number):
                return number
            raise self.error(entry, f"{what} {number} is not a finite number")
        raise self.error(entry, f"{what} is not a number (found {_describe(value)})")

    def positive_integer(self, value: Any, entry: int, what: str) -> int:
        """A number that must be a whole number >= 1 (a MATLAB label or class index)."""
        number = self.number(value, entry, what)
        if number < 1 or number != int(number):
            raise self.error(entry, f"{what} {number:g} is not a positive integer")
        return int(number)


def _unwrap(value: Any) -> Any:
    """A cell's content: object arrays of one element are opened (nested cells too)."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.ravel()[0]
    return value


def _one_struct(value: Any) -> Any:
    """A struct array's record, or the record of a 1 x 1 struct held in a cell."""
    value = _unwrap(value)
    if isinstance(value, np.ndarray) and value.dtype.names is not None and value.size == 1:
        return value.ravel()[0]
    return value


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        kind = {"U": "text", "O": "a cell array"}.get(value.dtype.kind, "numbers")
        return f"{kind} of {value.size} elements" if value.size != 1 else kind
    return type(value).__name__
