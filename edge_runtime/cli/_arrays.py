"""Reading request arrays from files for the runtime commands, without unpickling anything.

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

__all__ = ["read_npy", "read_npz_xy"]


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load one array from a ``.npy`` file (``allow_pickle=False``)."""
    source = Path(path)
    try:
        arr = np.load(source, allow_pickle=False)
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
