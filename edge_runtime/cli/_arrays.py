"""Reading request arrays (and labels) from files for the runtime commands, without unpickling anything.

Every failure (missing file, not a ``.npy``/``.npz``, object arrays, missing keys) becomes one
:class:`~edge_runtime.errors.InputError` line that names the fix, so the dispatcher prints it and
exits 1.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError, error_line

__all__ = ["class_ids", "read_inputs", "read_npy", "read_npz_xy"]


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load one array from a ``.npy`` file (``allow_pickle=False``)."""
    source = Path(path)
    try:
        arr: np.ndarray | np.lib.npyio.NpzFile = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input file {source} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{source} is a directory; give a .npy file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{source} is not a readable .npy array ({error_line(exc)}); save it with numpy.save") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise InputError(f"{source} is an .npz archive; give a .npy array (numpy.save) for --input")
    return arr


def read_inputs(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (and labels, if the file has them) from a ``.npy`` array or an ``.npz`` archive.

    An ``.npz`` gives ``x`` with ``y`` when present, else ``x_test`` with ``y_test`` when present (the
    layout :func:`distill.data.load_dataset` reads); labels may be class ids or class names.
    """
    source = Path(path)
    if not (source.is_file() and zipfile.is_zipfile(source)):
        return read_npy(source), None
    try:
        with np.load(source, allow_pickle=False) as data:
            for x_key, y_key in (("x", "y"), ("x_test", "y_test")):
                if x_key in data.files:
                    return data[x_key], (data[y_key] if y_key in data.files else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source} is not a readable .npz ({error_line(exc)}); save it with numpy.savez, no objects") from None
    raise InputError(f"{source} has no array 'x' or 'x_test'; save it with numpy.savez(path, x=..., y=...)")


def class_ids(y: np.ndarray, labels: tuple[str, ...], count: int) -> np.ndarray:
    """Labels as int64 class ids: ids 0..C-1 as they are, names (str or bytes) by the bundle's ``labels``.

    Raises:
        InputError: not one label per sample, ids out of range, or names the bundle does not know.
    """
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != count:
        raise InputError(f"{y.shape[0]} labels for {count} samples; give one label per sample")
    if y.dtype.kind in "US":
        names = np.char.decode(y, "utf-8") if y.dtype.kind == "S" else y
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({str(n) for n in names.tolist()} - set(index))
        if unknown:
            raise InputError(f"labels {unknown[:5]} are not among the bundle's {list(labels)[:10]}; use its class names or ids")
        return np.array([index[str(n)] for n in names.tolist()], dtype=np.int64)
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise InputError(f"labels of dtype {y.dtype} are neither class ids nor class names; use integers or strings")
    ids = y.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(labels)):
        raise InputError(f"labels must lie in 0..{len(labels) - 1} for this bundle (class ids); found {ids.min()}..{ids.max()}")
    return ids


def read_npz_xy(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load arrays ``x`` (raw inputs) and ``y`` (integer labels) from an ``.npz`` file."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(f"{source} holds one array; give an .npz with arrays x and y (numpy.savez)")
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise InputError(f"{source} lacks arrays {missing}; save it with numpy.savez(path, x=..., y=...)")
            return data["x"], data["y"]
    except FileNotFoundError:
        raise InputError(f"data file {source} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{source} is a directory; give an .npz file") from None
    except TypeError:
        raise InputError(f"{source} is not an .npz archive; save it with numpy.savez(path, x=..., y=...)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source} is not a readable .npz ({error_line(exc)}); save it with numpy.savez") from None
