"""ONNX Runtime sessions: the one place the runtime configures onnxruntime.

Defaults suit the small members anytime ensembles are made of: one intra-op thread, sequential execution,
all graph optimisations, and no spinning (a spinning thread keeps burning a core after each call, which
on a 2-core factory PC steals time from the next member and from other processes).

Telemetry: official ONNX Runtime builds send usage events to Microsoft and keep a device id under
``~/.cache`` (see onnxruntime's Privacy.md). An edge runtime on a factory PC must not phone home, so this
module sets ``ORT_DISABLE_TELEMETRY=1`` before onnxruntime is first imported (ORT reads it once, when it
initialises; ``onnxruntime.disable_telemetry_events()`` afterwards did not stop its DNS lookups). A value
the user set is kept: ``ORT_DISABLE_TELEMETRY=0`` in the environment opts in to ORT's telemetry.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

from edge_runtime.errors import DependencyError, ModelLoadError, SessionConfigError, error_line

__all__ = [
    "ORT_FLOOR",
    "TELEMETRY_ENV",
    "RunTimeout",
    "SessionConfig",
    "create_session",
    "fast_run",
    "new_run_options",
    "ort",
    "run_bounded",
]

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
os.environ.setdefault(TELEMETRY_ENV, "1")  # before onnxruntime is imported below: ORT reads it when it initialises

# The lowest onnxruntime declared in pyproject.toml: the first release built for NumPy 2 (1.17 and 1.18.0
# were built for NumPy 1.x and cannot import with numpy 2; 1.18.1 caps numpy<2 itself).
ORT_FLOOR = "1.19"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _import_onnxruntime() -> ModuleType:
    """Import onnxruntime; an installed-but-broken one becomes one line that names the fix.

    An onnxruntime built for NumPy 1.x under numpy 2 prints numpy's banner and two tracebacks to stderr and
    raises a bare ImportError; that output is held back and replaced by :class:`DependencyError`.

    Raises:
        DependencyError: onnxruntime is installed but fails to import.
        ModuleNotFoundError: onnxruntime is not installed (the CLI names the install command).
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import onnxruntime
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise
        ort_version, numpy_version = _version("onnxruntime"), _version("numpy")
        if "NumPy 1.x" in captured.getvalue() or "_ARRAY_API" in captured.getvalue():
            raise DependencyError(
                f"onnxruntime {ort_version} cannot import with numpy {numpy_version} (it was built for NumPy 1.x); "
                f"pip install 'onnxruntime>={ORT_FLOOR}' (or pip install 'numpy<2')"
            ) from exc
        reason = error_line(exc)
        raise DependencyError(
            f"onnxruntime {ort_version} fails to import ({reason}); "
            f"reinstall it: pip install --force-reinstall 'onnxruntime>={ORT_FLOOR}'"
        ) from exc
    sys.stderr.write(captured.getvalue())  # a healthy import's own warnings are not ours to hide
    return cast(ModuleType, onnxruntime)  # onnxruntime ships no type hints: the checker sees Any


# The onnxruntime module, imported with the telemetry default set (import it from here, as device.py does).
if TYPE_CHECKING:  # the checker reads the module's names (ORT's types are Any to it: no hints shipped)
    import onnxruntime as ort
else:
    ort = _import_onnxruntime()

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How each member's InferenceSession is built."""

    intra_op_threads: int = 1  # threads inside one operator; 1 is fastest for small members
    inter_op_threads: int = 1  # threads across operators (used only when parallel=True)
    parallel: bool = False  # ORT_PARALLEL execution mode instead of ORT_SEQUENTIAL
    allow_spinning: bool = False  # let idle ORT threads spin (lower latency, burns CPU)
    optimization: str = "all"  # graph optimisation level: disable / basic / extended / all
    cpu_mem_arena: bool = False  # ORT's CPU arena: keeps the peak of any batch allocated for good (see below)
    enable_profiling: bool = False  # write ORT's Chrome-trace JSON (per-node kernel times)
    profile_prefix: str = "ort_profile"  # file prefix when enable_profiling is set
    # Seconds one member's first (single-sample) warm-up run may take before ONNX Runtime is told to stop
    # it (RunOptions.terminate); a member that loops without end then fails to load. None: no limit.
    load_timeout_s: float | None = 5.0

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SessionConfigError("thread counts must be >= 0 (0 lets ONNX Runtime choose)")
        if self.load_timeout_s is not None and not (0 < self.load_timeout_s < float("inf")):
            raise SessionConfigError(f"load_timeout_s must be a positive number of seconds or None, not {self.load_timeout_s}")
        if self.optimization not in _OPT_LEVELS:
            raise SessionConfigError(f"optimization must be one of {sorted(_OPT_LEVELS)}, not '{self.optimization}'")

    def to_session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _OPT_LEVELS[self.optimization]
        options.enable_cpu_mem_arena = self.cpu_mem_arena
        spinning = "1" if self.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        # Fatal only: ORT's own error lines (coloured, with build paths) would break one-line CLI output;
        # the exception carries the same error, and the CLI and the server report it (see error_line).
        options.log_severity_level = 4
        if self.enable_profiling:
            options.enable_profiling = True
            options.profile_file_prefix = self.profile_prefix
        return options

    def describe(self) -> dict[str, object]:
        """The settings, for profiles and reports (latency means little without them)."""
        return {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "execution_mode": "parallel" if self.parallel else "sequential",
            "allow_spinning": self.allow_spinning,
            "optimization": self.optimization,
        }


def create_session(model: bytes, config: SessionConfig | None = None, name: str = "model") -> ort.InferenceSession:
    """Build a CPU InferenceSession from ONNX bytes.

    Raises:
        ModelLoadError: ONNX Runtime rejected the model (corrupt file, unsupported opset or operator).
    """
    config = config or SessionConfig()
    try:
        return ort.InferenceSession(model, sess_options=config.to_session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated types for a bad model
        raise ModelLoadError(f"ONNX Runtime could not load '{name}': {error_line(exc)}; re-export the model") from exc


def fast_run(session: Any) -> Callable[[Sequence[str], Mapping[str, Any], Any], list[Any]]:
    """The fastest correct way to call ``session.run(output_names, feed, run_options)``, for hot loops.

    ``InferenceSession.run`` re-validates the feed's input names (and the requested outputs) on every call,
    several µs per call in ORT 1.2x-1.3x: a large share of a small member's time. That check guards
    against a wrong feed, which cannot happen once the feed has been checked against the session: the
    runtime checks every member's inputs and outputs against its feed plan once at load
    (``AnytimeRuntime._check_contract``), and the profiler builds each feed from the graph's own inputs.
    So this returns the compiled binding under ``InferenceSession.run`` when it exists, and the public
    method otherwise (other ORT versions, fake sessions in tests). Both take the same arguments and return
    the outputs as a list of arrays.

    Call it only with feeds whose names match the session's inputs exactly: the binding does not explain
    a wrong name as clearly as ``InferenceSession.run`` does.

    Args:
        session: an ``onnxruntime.InferenceSession`` (or any object with a ``run`` method).

    Returns:
        ``run(output_names, feed, run_options)``: output_names a list of str, feed a dict of name ->
        numpy array, run_options an ``onnxruntime.RunOptions`` or None.
    """
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    chosen: Callable[[Sequence[str], Mapping[str, Any], Any], list[Any]] = run if callable(run) else session.run
    return chosen


class RunTimeout(Exception):
    """:func:`run_bounded` stopped a run at its deadline (internal: callers turn it into their own error)."""


def new_run_options() -> ort.RunOptions:
    """A ``RunOptions`` whose ``terminate`` may be set from another thread to stop the run between operators.

    Logging is fatal-only: ORT logs a stop as an error line, and the caller reports the stop itself.
    """
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def run_bounded(session: Any, output_names: Sequence[str], feed: Mapping[str, Any], timeout_s: float | None) -> list[Any]:
    """``session.run(output_names, feed)``, stopped by ``RunOptions.terminate`` once ``timeout_s`` has passed.

    A timer thread sets ``terminate``; ONNX Runtime then stops between operators and the run raises. ORT
    has no error code for it (onnxruntime issue #20999), so the timeout is recognised by the timer having
    fired *and* the run having failed, never by the message text. The timer thread is always joined.

    Raises:
        RunTimeout: the deadline stopped the run.
        Exception: whatever the run raised for any other reason.
    """
    if timeout_s is None:
        outputs: list[Any] = session.run(list(output_names), dict(feed))
        return outputs
    options = new_run_options()
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        options.terminate = True

    timer = threading.Timer(timeout_s, stop)
    timer.daemon = True
    timer.start()
    try:
        outputs = session.run(list(output_names), dict(feed), options)
        return outputs
    except Exception as exc:  # ORT's failure types vary; the timer decides what it was
        if fired.is_set():
            raise RunTimeout(f"stopped after {timeout_s:g} s") from exc
        raise
    finally:
        timer.cancel()
        timer.join()
