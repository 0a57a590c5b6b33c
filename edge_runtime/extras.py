"""The optional extras, the modules each one brings, and the one install command every message names.

anytime-edge is installed from a checkout of the project (it is not on a package index), with the tested
versions in ``constraints.txt``; the ``train`` extra also needs torch's CPU build, which ``make install``
fetches first (a plain ``pip install`` on Linux x86-64 would resolve a multi-GB CUDA build). So messages
name ``make install`` for ``train`` and a constrained pip command for the light extras; README "Install
without make" gives the pip steps for ``train``.
"""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "install_hint", "missing_dependency_message"]

# top-level module name -> the extra that installs it ("" = the runtime itself: pip install .)
EXTRA_OF_MODULE: dict[str, str] = {
    "numpy": "",
    "onnxruntime": "",
    "psutil": "",
    "torch": "train",
    "onnx": "wrap",  # the light extra that brings onnx alone (train brings it too)
    "onnxscript": "train",
    "onnx_ir": "train",
    "sklearn": "train",
    "scipy": "train",
    "mnist1d": "train",
    "tqdm": "train",
    "torch_pruning": "train",
    "starlette": "serve",
    "uvicorn": "serve",
    "kserve": "kserve",
    "matplotlib": "plot",
    "adjustText": "plot",
    "httpx": "dev",
    "jsonschema": "dev",
    "pytest": "dev",
}


def install_hint(extra: str) -> str:
    """The install command for ``extra`` ("" = the runtime only), as said to a user in the checkout."""
    if extra == "train":
        return "run `make install` in the project checkout (torch's CPU build and every extra, in .venv)"
    if not extra:  # the runtime alone: its declared ranges, not the pins (those are for the training stack)
        return "pip install . in the project checkout"
    return f"pip install -c constraints.txt '.[{extra}]' in the project checkout (or make install)"


def missing_dependency_message(module: str) -> str | None:
    """One line for a missing ``module`` (dotted names allowed), or None if no extra provides it.

    Example: ``"needs torch (the 'train' extra), which is not installed; run `make install` ..."``; callers
    put what needs it in front.
    """
    top = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    which = f"the '{extra}' extra" if extra else "the runtime"
    return f"needs {top} ({which}), which is not installed; {install_hint(extra)}"
