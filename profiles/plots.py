"""Plot helpers shared by every PNG the toolkit writes; matplotlib is optional (the 'plot' extra).

One return convention for every plot function of the toolkit (:func:`profiles.select.plot_selection`,
:func:`distill.sparse.dsd2.plot_curves`, the demo's accuracy-vs-latency plot): it returns ``None`` when
the PNG was written, else a one-line reason that names the install fix (from :func:`load_pyplot`), so a
command can print the reason and carry on: a plot never fails a run.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from edge_runtime.extras import missing_dependency_message

__all__ = ["load_pyplot", "save_figure"]


def load_pyplot(*also: str) -> tuple[Any, str | None]:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display on a factory PC), or why not.

    Args:
        also: further modules the plot needs (e.g. ``"adjustText"``); imported to check they are there.

    Returns:
        ``(pyplot, None)``, or ``(None, reason)`` when matplotlib or one of ``also`` is not installed;
        ``reason`` is one line such as ``"no plot was written: it needs matplotlib (the 'plot' extra), ..."``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for name in also:
            importlib.import_module(name)
    except ImportError as exc:
        name = exc.name or "matplotlib"
        return None, f"no plot was written: it {missing_dependency_message(name) or f'needs {name}, which is not installed'}"
    return plt, None


def save_figure(plt: Any, fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` as a PNG at ``dpi`` and close it (figures are not kept open between plots)."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
