"""`mlscope run`: tracing an unmodified Python program from inside its own process.

`mlscope run` starts the program with agents/autoload/ first on PYTHONPATH; Python's `site`
then imports the `sitecustomize.py` there, which calls `autoload()` here before the program's
first line. From the environment (`run_environment` writes it) this:

- starts an Agent and opens the process span: application level, named after what the process
  is (the script or `-m` module, a multiprocessing worker, a DataLoader worker, a torch.compile
  worker: `process_span_name`; a worker learns what it is after start-up, so the span is named
  again at its end, and marked when its parent has gone by then), the child of TRACEPARENT
  when the environment has one, and current for the program's main thread, so everything the program traces nests under it. TRACEPARENT is then
  set to the process span, so Python subprocesses of the program (which inherit the environment
  and the bootstrap) join the same trace;
- instruments, at model level and deeper, top-level `torch.nn.Module` calls and every
  `onnxruntime.InferenceSession.run` as model spans, through `Agent.model_spec`/`call_model`,
  the code path of `Agent.trace_model`; at layer level and deeper, ONNX Runtime sessions are
  created with ORT's profiler on, for their node and kernel spans (see AutoInstrumentor);
- ends the process span and flushes at exit (atexit, or SIGTERM when the program left SIGTERM at
  its default), with error status when the program exits non-zero or on an uncaught exception,
  and the exit code and signal as the shell sees them; every way out has a deadline
  (EXIT_SHUTDOWN_S, SIGTERM_SHUTDOWN_S);
- in a forked child (multiprocessing's fork workers, DataLoader workers), starts the child's own
  process span, under the parent's, once the agent has rebuilt itself there (Agent._after_fork_in_child);
- in a pass of `mlscope run --leveled` (MLSCOPE_LEVELED_REPORT set), marks the process span
  with its pass and appends the tally of its spans to that file at exit (agents/leveled.py).

Why an import hook rather than importing torch at start-up: importing torch costs seconds and
hundreds of MB (docs/PERFORMANCE.md), and most processes a pipeline starts (shell helpers, data tools) never use it.
The hook (a meta-path finder) watches only the names `torch` and `onnxruntime`, patches right
after their top-level module has run, and patches at once when they are already imported.

Threads the program starts do not inherit the process span (contextvars are per thread), so
it is also the agent's `default_parent`: their model spans and stages join the run's trace under
it (under the thread's own current span when it has one). What the agent could not deliver is
counted per level on the process span (`mlscope.dropped.<level>`) and reported beside the
trace id file (run_config.undelivered_line) for `mlscope run`'s last line.

Limits: `python -I`, `-E` and `-S` skip PYTHONPATH or `site`, so nothing is traced; `raise SystemExit(n)` outside
`sys.exit` exits without an error status; `os._exit` skips the flush.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from mlscope.conventions import (
    ENV_LEVELED_REPORT,
    ENV_TRACE_FILE,
    FRAMEWORK_VERSION,
    LEVELED_PASS,
    LEVELS,
    PHASE,
    PROCESS_COMMAND_LINE,
    PROCESS_EXECUTABLE_PATH,
    PROCESS_EXIT_CODE,
    PROCESS_ORPHANED,
    PROCESS_PID,
    PROCESS_SIGNAL,
)

from .api import Agent, in_model_call, start_agent
from .model_spec import ModelSpec, batch_size
from .leveled import SpanTally, append_report
from .otlp_exporter import EncodedSpanExporter
from .propagation import extract_env, inject_env
from .training import TrainingInstrumentor
from .run_config import program_name, run_config, undelivered_line, undelivered_report_path
from .span_loss import dropped_attributes

if TYPE_CHECKING:
    from .onnx_capture import TracedOnnxSession

log = logging.getLogger(__name__)

PROCESS_ATTRIBUTES = (PROCESS_PID, PROCESS_EXECUTABLE_PATH, PROCESS_COMMAND_LINE)


# --- instrumentation ----------------------------------------------------------------------------


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs a callback once a watched top-level module has been executed. It finds nothing
    itself: it asks the other finders, and wraps the found loader's `exec_module` for that one
    module only (the loader object stays the module's loader)."""

    def __init__(self, callbacks: Mapping[str, Callable[[types.ModuleType], None]]) -> None:
        self._callbacks = callbacks
        self._finding: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        callback = self._callbacks.get(fullname)
        if callback is None or fullname in self._finding:
            return None
        self._finding.add(fullname)  # importlib.util.find_spec comes back here: step aside
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        loader = getattr(spec, "loader", None)
        # A per-module loader object only: patching a shared or class-level loader
        # (builtins, frozen modules) would run the callback for other modules too.
        if not isinstance(loader, importlib.machinery.SourceFileLoader):
            log.debug("mlscope: %s is loaded by %r: not instrumented", fullname, loader)
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module: types.ModuleType) -> None:
            try:
                exec_module(module)
            finally:
                vars(loader).pop("exec_module", None)
            try:
                callback(module)
            except Exception:  # instrumentation must never break the program's import
                log.exception("mlscope: %s imported but not instrumented", fullname)

        loader.exec_module = exec_then_patch
        return spec


class AutoInstrumentor:
    """Top-level torch module calls and ONNX Runtime session runs as model spans of `agent`.

    At layer level and deeper, ONNX Runtime sessions are created with ORT's profiler on, which
    gives their node (layer) and kernel (library) spans (agents/onnx_capture.py). The profiler
    can only be switched on in the SessionOptions a session is created with, so
    `InferenceSession.__init__` is patched: the user's options are extended with profiling only
    while the session is created (it keeps its own copy) and then restored, so every setting of
    theirs applies and their object is left as they made it. A session the user profiles
    themselves is theirs: model spans only, and ORT writes their profile where they asked.
    Profiled sessions are kept to the end of the process, when their profiles are read (or
    after their first DEFAULT_PROFILE_RUNS runs); profile files go to a temporary directory
    that `uninstrument()` removes.

    `instrument()` and `uninstrument()` are idempotent and mirror each other: after
    `uninstrument()` the patched methods are the originals again and no import hook is left."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._finder: _PostImportFinder | None = None
        self._patches: list[tuple[type, str, Any, Any]] = []  # (owner, name, original, patched)
        self._specs: weakref.WeakKeyDictionary[Any, ModelSpec] = weakref.WeakKeyDictionary()
        self._profiled_sessions: list[TracedOnnxSession] = []
        self._profile_dir: str | None = None
        self._profile_numbers = itertools.count()
        # Held while a session is created at layer level and deeper: another thread may be
        # creating one from the same SessionOptions object, which must not see it extended (or
        # restored) midway. Creating sessions one at a time is the cost, at profiling levels only.
        self._session_creation_lock = threading.Lock()
        self._training = TrainingInstrumentor(agent)

    @property
    def instrumented(self) -> bool:
        return self._finder is not None

    def instrument(self) -> None:
        if self.instrumented or not self._agent.enabled("model"):
            return
        callbacks = {"torch": self._patch_torch, "onnxruntime": self._patch_onnxruntime}
        self._finder = _PostImportFinder(callbacks)
        sys.meta_path.insert(0, self._finder)
        for name, patch in callbacks.items():
            if name in sys.modules:
                patch(sys.modules[name])

    def uninstrument(self) -> None:
        if self._finder is None:
            return
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        self._finder = None
        for owner, name, original, patched in reversed(self._patches):
            if owner.__dict__.get(name) is patched:
                setattr(owner, name, original)
            else:  # patched again over us: restoring would drop that patch too
                log.debug("mlscope: %s.%s was re-patched by someone else; left as is", owner.__name__, name)
        self._patches.clear()
        self._training.uninstrument()
        self._specs = weakref.WeakKeyDictionary()
        for session in self._profiled_sessions:
            session.end_profiling()  # writes their spans (a no-op once the agent's shutdown did)
        self._profiled_sessions.clear()
        if self._profile_dir is not None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None

    def _patch(self, owner: type, name: str, wrap: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        patched = functools.wraps(original)(wrap(original))
        setattr(owner, name, patched)
        self._patches.append((owner, name, original, patched))

    def _patch_torch(self, torch: types.ModuleType) -> None:
        agent, specs = self._agent, self._specs
        framework_version = str(torch.__version__)

        def spec_of(module: Any) -> ModelSpec:
            spec = specs.get(module)
            if spec is None:
                # A torch.compile'd model is named by the model it compiled, not its wrapper.
                name = type(getattr(module, "_orig_mod", module)).__name__
                spec = specs[module] = agent.model_spec(
                    module, name, "pytorch", span_name="forward",
                    attributes={FRAMEWORK_VERSION: framework_version, PHASE: "forward"},
                )
            return spec

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            # Runs on every module call of the program, nested ones included: those cost one
            # context-variable read on top of torch's own call.
            def traced_call(module: Any, *args: Any, **kwargs: Any) -> Any:
                if in_model_call():
                    return original(module, *args, **kwargs)
                return agent.call_model(spec_of(module), functools.partial(original, module), args, kwargs,
                                        batch_size(args))

            return traced_call

        self._patch(torch.nn.Module, "__call__", wrap)
        self._training.instrument(torch)

    def _patch_onnxruntime(self, onnxruntime: types.ModuleType) -> None:
        from .onnx_capture import session_attributes

        agent, specs = self._agent, self._specs

        def spec_of(session: Any) -> ModelSpec:
            spec = specs.get(session)
            if spec is None:  # a session not profiled by us (profiled ones get theirs when created)
                spec = specs[session] = agent.model_spec(
                    session, _onnx_model_name(session), "onnxruntime", span_name="run",
                    attributes=session_attributes(session),
                )
            return spec

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def traced_run(session: Any, *args: Any, **kwargs: Any) -> Any:
                if in_model_call():
                    return original(session, *args, **kwargs)
                feed = args[1] if len(args) > 1 else kwargs.get("input_feed") or {}
                first_input = tuple(feed.values())[:1] if isinstance(feed, Mapping) else ()
                return agent.call_model(spec_of(session), functools.partial(original, session), args, kwargs,
                                        batch_size(first_input))

            return traced_run

        # The class users instantiate defines `run` on its base; patch where it is defined.
        session_class = onnxruntime.InferenceSession
        owner = next(cls for cls in session_class.__mro__ if "run" in cls.__dict__)
        self._patch(owner, "run", wrap)
        if agent.enabled("layer"):
            self._patch(session_class, "__init__", functools.partial(self._profiling_init, onnxruntime))

    def _profiling_init(self, onnxruntime: types.ModuleType, original: Callable[..., None]) -> Callable[..., None]:
        """`InferenceSession.__init__` creating the session with ORT's profiler on (see the
        class docstring); `path_or_bytes` and `sess_options` are the names ORT gives them."""

        def profiled_init(session: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
            with self._session_creation_lock:
                if sess_options is not None and sess_options.enable_profiling:
                    log.info("mlscope onnxruntime: the program profiles this session itself: its profile is "
                             "left to it, and its runs get model spans only")
                    original(session, path_or_bytes, sess_options, *args, **kwargs)
                    return
                options = onnxruntime.SessionOptions() if sess_options is None else sess_options
                users_prefix = options.profile_file_prefix
                options.enable_profiling, options.profile_file_prefix = True, self._new_profile_prefix()
                try:
                    original(session, path_or_bytes, options, *args, **kwargs)
                finally:
                    options.enable_profiling, options.profile_file_prefix = False, users_prefix
            traced = self._agent.trace_onnx_session(session, _onnx_model_name(session), span_name="run")
            self._profiled_sessions.append(traced)
            self._specs[session] = traced.spec

        return profiled_init

    def _new_profile_prefix(self) -> str:
        if self._profile_dir is None:
            self._profile_dir = tempfile.mkdtemp(prefix="mlscope-ort-")
        # ORT names the file <prefix>_<time to the second>.json: a prefix per session keeps two
        # sessions created within a second apart.
        return str(Path(self._profile_dir) / f"session-{next(self._profile_numbers)}")


def _onnx_model_name(session: Any) -> str:
    path = getattr(session, "_model_path", None)  # None when the session was built from bytes
    return Path(path).stem if isinstance(path, str) and path else "onnx-model"


# --- the process span -------------------------------------------------------------------------


COMPILE_WORKER_ENTRY = ("torch/_inductor/compile_worker", "torch._inductor.compile_worker")
"""How the command (or, in a process spawned from it, the parent's `sys.argv`) of inductor's
compile workers points at them: the script's folder, or the `-m` module."""


MULTIPROCESSING_HELPER = re.compile(r"from (multiprocessing\.\w+) import main\b")
"""The `python -c` command of multiprocessing's own helpers (`multiprocessing.resource_tracker`,
`multiprocessing.forkserver`), named after their module."""


def process_span_name(command: Sequence[str], script_argv: Sequence[str], multiprocessing_name: str | None,
                      dataloader_worker_id: int | None) -> str:
    """What this process is, as its process span's name: `DataLoader worker N`, `torch.compile
    worker` (with the multiprocessing name of its own pool's processes), a `multiprocessing`
    process's name (`ForkPoolWorker-2`, `SpawnPoolWorker-1`, `SpawnProcess-1`), a multiprocessing
    helper's module, else the program's name (`program_name`). `command` is `sys.orig_argv`; `script_argv` is `sys.argv`,
    which a spawned multiprocessing child takes over from its parent."""
    if dataloader_worker_id is not None:
        return f"DataLoader worker {dataloader_worker_id}"
    worker = multiprocessing_name if multiprocessing_name not in (None, "MainProcess") else None
    if any(entry in arg for arg in (*command, *script_argv[:1]) for entry in COMPILE_WORKER_ENTRY):
        return f"torch.compile worker ({worker})" if worker else "torch.compile worker"
    if worker:
        return worker
    helper = next((match for arg in command[1:] if (match := MULTIPROCESSING_HELPER.match(arg))), None)
    return helper.group(1) if helper else program_name(command)


def current_process_name() -> str:
    """`process_span_name` of this process now. Spawned children learn their multiprocessing
    name, and DataLoader workers their id, only after start-up: the process span asks again at
    its end. Imports nothing: a module the program has not imported has nothing to say."""
    multiprocessing = sys.modules.get("multiprocessing")
    data = sys.modules.get("torch.utils.data")
    worker_info = data.get_worker_info() if data is not None else None
    return process_span_name(sys.orig_argv, sys.argv,
                             multiprocessing.current_process().name if multiprocessing is not None else None,
                             getattr(worker_info, "id", None))


SIGTERM_SHUTDOWN_S = 2.0
"""How long a SIGTERM'd process may take to export what it holds before it dies of the signal:
a process manager (Pool.terminate, systemd, docker stop) expects it gone at once."""
EXIT_SHUTDOWN_S = 10.0
"""How long a normal exit may take to export what is queued (an unreachable collector costs at
most this much; a reachable one takes what it needs to receive the spans, well under it)."""


class ProcessSpan:
    """The span of this whole process: started now, current in this thread, ended once by
    `end()` (at exit, on SIGTERM, or by the caller), which then calls `at_end`'s callbacks.
    In the child of a fork it starts again (`restart_in_child`): the child's own process span.
    `name` says what the process is: asked at the start and again at the end, when a worker
    knows what it is (`current_process_name`)."""

    def __init__(self, agent: Agent, name: Callable[[], str], attributes: Mapping[str, Any],
                 env: Mapping[str, str]) -> None:
        self._agent = agent
        self._name = name
        self.at_end: list[Callable[[], None]] = []
        """Called once every span of the process has ended and been exported."""
        self.undelivered_report: str | None = None
        """A file to append the count of spans the collector did not take to, at the end (when any)."""
        self._start(attributes, extract_env(env))

    def _start(self, attributes: Mapping[str, Any], parent: otel_context.Context | None) -> None:
        self.span = self._agent.start_span(self._name(), "application", attributes, context=parent)
        self._pid = os.getpid()  # the process this span is of: a forked child has it until restarted
        self._parent_pid = os.getppid()
        # Current in this thread; the parent of what other threads trace without a span of their own.
        self._agent.default_parent = trace.set_span_in_context(self.span)
        self._token = otel_context.attach(self._agent.default_parent)
        self._thread = threading.get_ident()  # the one thread whose context holds the span
        self._exit_code: int | None = None
        self._signal: str | None = None
        self._ended = False
        self._die_of: int | None = None
        self._reporting = threading.Lock()
        self._reported = False

    def restart_in_child(self, attributes: Mapping[str, Any]) -> None:
        """In the child of a fork (after the agent has been rebuilt there): this process's own
        span, the child of the parent's process span, with no clean-up inherited (`at_end`
        empties: the parent's callbacks are the parent's). The parent's span is left unended
        here: the parent ends and exports it."""
        parent = trace.set_span_in_context(self.span)
        self.at_end = []
        self._start(attributes, parent)

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def record_exit(self, code: Any) -> None:
        """Remembers the code a `sys.exit(code)` call is exiting with (None and 0 mean success;
        another non-int, like a message, means 1, as Python itself decides)."""
        self._exit_code = 0 if code is None else code if isinstance(code, int) else 1

    def record_exception(self, error: BaseException) -> None:
        self.span.record_exception(error)
        if isinstance(error, KeyboardInterrupt):  # Python then dies of SIGINT: the shell sees 130
            self.record_signal(signal.SIGINT)
        else:
            self._exit_code = 1

    def record_signal(self, signum: int) -> None:
        """The process ends of signal `signum`: exit code 128 + signum, as shells report it."""
        self._exit_code = 128 + signum
        self._signal = signal.Signals(signum).name

    @property
    def ending(self) -> bool:
        return self._ended

    def die_of_after_end(self, signum: int) -> None:
        """Signal `signum` came while `end()` runs (a multiprocessing worker's clean-up, say):
        that `end()`, bounded, finishes, then the process dies of the signal."""
        self._die_of = signum

    def end(self, reason: str | None = None, timeout_s: float = EXIT_SHUTDOWN_S) -> None:
        """Ends the span (error status for `reason` or a non-zero exit code) and shuts the agent
        down within `timeout_s`: ORT profilers and the hardware sampler hand over what they
        hold, all is exported (what is not by then is dropped)."""
        if self._ended or os.getpid() != self._pid:  # the parent's span, in a child not restarted: the parent's to end
            return
        self._ended = True
        try:
            self._end(reason, timeout_s)
        finally:
            if self._die_of is not None:
                _die_of(self._die_of)

    def _end(self, reason: str | None, timeout_s: float) -> None:
        code = self._exit_code or 0
        self.span.update_name(self._name())
        self.span.set_attribute(PROCESS_EXIT_CODE, code)
        if _outlived(self._parent_pid):  # a helper its parent left running: marked, not an error
            self.span.set_attribute(PROCESS_ORPHANED, True)
        if self._signal:
            self.span.set_attribute(PROCESS_SIGNAL, self._signal)
        if reason or code:
            self.span.set_status(Status(StatusCode.ERROR, reason or f"exit code {code}"))
        # The queued calls first: what they drop is then counted on the span (later losses, the
        # span's own export included, reach only the run's report).
        deadline = time.monotonic() + timeout_s
        self._agent.flush_deep_spans(timeout_s / 2)
        self.span.set_attributes(dropped_attributes(self._agent.dropped_spans()))
        self.span.end()
        if threading.get_ident() == self._thread:  # else (SIGTERM's thread) detaching fails loudly
            otel_context.detach(self._token)
        self._agent.shutdown(max(deadline - time.monotonic(), 0.0))
        self._report_undelivered(self._agent.dropped_spans())
        for callback in self.at_end:
            try:
                callback()
            except Exception:  # at exit: one failing clean-up must not stop the others
                log.exception("mlscope: clean-up at exit failed")


    def report_unfinished(self) -> None:
        """`end()` ran out of time (on SIGTERM, before the process dies): what is counted lost so
        far and what is still queued or in flight, which may yet arrive but is not confirmed,
        reported as undelivered; `end()` reports nothing after this."""
        counts = Counter(self._agent.dropped_spans())
        counts.update(self._agent.unconfirmed_spans())
        if self.span.is_recording():  # not even ended: it will not be sent (once ended, it is queued or in flight)
            counts[LEVELS[0]] += 1
        self._report_undelivered(counts)

    def _report_undelivered(self, counts: Mapping[str, int]) -> None:
        """Appends `counts` (spans not delivered, per level) to the run's report, once, if any."""
        with self._reporting:
            if self._reported or not any(counts.values()) or not self.undelivered_report:
                return
            self._reported = True
        try:
            with open(self.undelivered_report, "a", encoding="utf-8") as report:
                report.write(undelivered_line(counts))
        except OSError as exc:
            log.debug("mlscope: undelivered spans not reported to %s: %s", self.undelivered_report, exc)


PF_EXITING = 0x4
"""Linux's flag (in /proc/<pid>/stat) of a process that has begun to exit."""


def _outlived(parent_pid: int) -> bool:
    """Whether this process's parent (`parent_pid` at the start) has gone: it was re-parented,
    or, on Linux, the parent is exiting (a helper such as multiprocessing's resource tracker ends
    when its parent's exit closes their pipe, a moment before the kernel re-parents it)."""
    if os.getppid() != parent_pid:
        return True
    try:
        stat = Path(f"/proc/{parent_pid}/stat").read_text()
    except OSError:
        return False
    # The fields after the command's closing parenthesis: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    return bool(int(stat.rpartition(")")[2].split()[6]) & PF_EXITING)


def _watch_exit(process: ProcessSpan) -> None:
    """Hooks that tell the process span how the program ends. They wrap what is there and
    stay for the life of the process (ending it is the only time they matter); a forked child
    inherits them, with `process` restarted as its own."""
    previous_excepthook, previous_exit = sys.excepthook, sys.exit

    def excepthook(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        process.record_exception(error)
        previous_excepthook(kind, error, traceback)

    def exit_recording_code(code: Any = None) -> None:
        process.record_exit(code)
        previous_exit(code)

    sys.excepthook = excepthook
    sys.exit = exit_recording_code
    atexit.register(process.end)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        terminating = threading.Lock()

        def terminate(signum: int) -> None:
            if not terminating.acquire(blocking=False):  # the watchdog's or the handler's, whichever came first
                return
            if process.ending:  # the signal interrupted the process span's own end: let it finish
                process.die_of_after_end(signum)
                return
            process.record_signal(signum)
            # Never waits long (a process manager, Pool.terminate, expects the process gone),
            # nor on the main thread: the code the signal interrupted may hold a lock the
            # shutdown needs. What is not exported within the deadline is lost.
            ender = threading.Thread(target=process.end, args=("terminated by SIGTERM", SIGTERM_SHUTDOWN_S),
                                     name="mlscope-sigterm", daemon=True)
            ender.start()
            ender.join(SIGTERM_SHUTDOWN_S + 0.5)
            if ender.is_alive():  # stuck (a collector slow to answer): what it holds is not claimed delivered
                process.report_unfinished()
            # Then die of the signal as the program would have: the exit status stays honest.
            _die_of(signum)

        watchdog = _SigtermWatchdog(terminate)

        def on_sigterm(signum: int, frame: Any) -> None:
            watchdog.handled.set()
            terminate(signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        watchdog.start()

        def after_fork_in_child() -> None:
            nonlocal terminating
            terminating = threading.Lock()
            watchdog.restart_in_child()
            _release_sigterm_after_fork()

        os.register_at_fork(before=_hold_sigterm_for_fork, after_in_parent=_release_sigterm_after_fork,
                            after_in_child=after_fork_in_child)


SIGTERM_WATCHDOG_S = 1.0
"""How long a SIGTERM may wait for the main thread to run its Python handler before the
watchdog thread ends the process itself."""


class _SigtermWatchdog:
    """A Python signal handler runs on the main thread, between bytecodes: a main thread in a long
    C call (a torch op, a regex), or in a wait that missed the signal (multiprocessing's
    semaphore, when the signal comes between its non-blocking try and its blocking wait: a pool
    worker then never ends, and Pool.terminate() waits for it), would leave a SIGTERM unhandled,
    where untraced the process would have died. Python writes each signal's number to a wakeup fd;
    a daemon thread reads it and, when the handler has not started within SIGTERM_WATCHDOG_S,
    runs `terminate` itself. Left out when the program (asyncio) set a wakeup fd of its own; a
    program that sets one later replaces this one."""

    def __init__(self, terminate: Callable[[int], None]) -> None:
        self._terminate = terminate
        self.handled = threading.Event()
        """Set by the Python handler as it starts."""
        self._fds: tuple[int, int] | None = None

    def start(self) -> None:
        """From the main thread (Python sets the wakeup fd there only)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return
        self._fds = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), name="mlscope-sigterm-watchdog", daemon=True).start()

    def restart_in_child(self) -> None:
        """In the child of a fork: its own pipe and thread (the parent's thread is not copied, and
        the parent reads the pipe the child inherited)."""
        self.handled = threading.Event()
        if self._fds is None or signal.set_wakeup_fd(-1) != self._fds[1]:
            return
        for fd in self._fds:
            os.close(fd)
        self._fds = None
        self.start()

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                signals = os.read(read_fd, 512)
            except OSError:
                return
            if not signals:
                return
            if signal.SIGTERM in signals and not self.handled.wait(SIGTERM_WATCHDOG_S):
                self._terminate(signal.SIGTERM)


_SIGTERM_HELD: set[int] = set()
"""The threads (by ident) that blocked SIGTERM for the fork they are making."""


def _hold_sigterm_for_fork() -> None:
    """`os.register_at_fork` before-hook: SIGTERM is blocked in the forking thread, so the child
    starts with it blocked and gets it only once its after-fork hooks have rebuilt the agent and
    started its own process span (`_release_sigterm_after_fork`, registered after them). Caught
    earlier (Pool.terminate() on a worker still starting, on a loaded machine), the handler ended
    the parent's span from the child, or Python dropped the signal (it clears those that came
    before its own after-fork reset) and the child never ended."""
    if signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}):
        _SIGTERM_HELD.add(threading.get_ident())


def _release_sigterm_after_fork() -> None:
    """After-fork hook, in parent and child: SIGTERM unblocked again where `_hold_sigterm_for_fork`
    blocked it (one that came meanwhile is delivered now). The child's only thread has the
    forking thread's ident."""
    if threading.get_ident() in _SIGTERM_HELD:
        _SIGTERM_HELD.discard(threading.get_ident())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _die_of(signum: int) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, signal.SIG_DFL)
    else:  # Python sets handlers from the main thread only: the C library's own call (NULL: SIG_DFL)
        libc_signal = ctypes.CDLL(None).signal
        libc_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc_signal(signum, None)
    os.kill(os.getpid(), signum)


def _end_multiprocessing_worker(process: ProcessSpan) -> None:
    """A fork-based multiprocessing worker leaves by `os._exit` after running its finalizers,
    not by atexit: one of them, run last, ends its process span. Registered at each such start
    (multiprocessing clears its finalizers in the new process, then runs its after-fork hooks)."""
    from multiprocessing import util

    util.Finalize(process, process.end, exitpriority=-100)


def _restart_in_forked_child(process: ProcessSpan, leveled: Callable[[], None] | None) -> None:
    """`os.register_at_fork` child hook (runs after the agent's own, which rebuilt it): the
    child's process span, current in its thread and in TRACEPARENT for its subprocesses."""
    try:
        resource = process._agent.resource_attributes()
        process.restart_in_child({key: resource[key] for key in PROCESS_ATTRIBUTES if key in resource})
        # The agent's rebuilt provider and writer registered their exit handlers after this one:
        # it must run first (atexit runs the last registered first), or the span ends into a
        # provider already shut down, and is lost.
        atexit.unregister(process.end)
        atexit.register(process.end)
        if leveled is not None:
            leveled()
        inject_env(os.environ, trace.set_span_in_context(process.span))
        if "multiprocessing.util" in sys.modules:
            from multiprocessing import util

            util.register_after_fork(process, _end_multiprocessing_worker)
    except Exception:  # the forked program must run on
        log.exception("mlscope: no process span for a forked process")


def _report_trace(path: str, trace_id: str) -> None:
    """The first process of a run writes its trace id for `mlscope run`; its subprocesses, in
    the same trace, find the file there and leave it."""
    try:
        with open(path, "x", encoding="utf-8") as report:
            report.write(trace_id)
    except FileExistsError:
        pass
    except OSError as exc:
        log.debug("mlscope: trace id not reported to %s: %s", path, exc)


def _join_leveled_pass(process: ProcessSpan, tally: SpanTally, writer: str, report_path: str, level: str) -> None:
    """This process belongs to a pass of `mlscope run --leveled`: its process span names the
    pass, and at exit the tally of its spans is appended to the pass's report."""
    process.span.set_attribute(LEVELED_PASS, level)
    process.at_end.append(lambda: append_report(report_path, tally.summary(level, writer)))


# --- the entry point --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrapped:
    agent: Agent
    process: ProcessSpan
    instrumentor: AutoInstrumentor


def autoload(env: Mapping[str, str] | None = None) -> Bootstrapped:
    """Starts tracing this process (see the module docstring); called by sitecustomize."""
    env = os.environ if env is None else env
    config = run_config(env, sys.orig_argv)
    tallies: list[SpanTally] = []

    def tallied(exporter: EncodedSpanExporter) -> SpanTally:
        tallies.append(SpanTally(exporter))
        return tallies[-1]

    leveled_report = env.get(ENV_LEVELED_REPORT)
    agent = start_agent(service=config.service, endpoint=config.endpoint, level=config.level,
                        wrap_exporter=tallied if leveled_report else None)
    resource = agent.resource_attributes()
    attributes = {key: resource[key] for key in PROCESS_ATTRIBUTES if key in resource}
    process = ProcessSpan(agent, current_process_name, attributes, env)
    leveled = None
    if leveled_report:
        def leveled() -> None:  # the newest tally: a forked child's agent counts with its own
            _join_leveled_pass(process, tallies[-1], agent.writer.value, leveled_report, config.level)

        leveled()
    os.register_at_fork(after_in_child=functools.partial(_restart_in_forked_child, process, leveled))
    # Subprocesses inherit os.environ: from here on they are children of this process span.
    inject_env(os.environ, trace.set_span_in_context(process.span))
    _watch_exit(process)
    if env.get(ENV_TRACE_FILE):
        _report_trace(env[ENV_TRACE_FILE], process.trace_id)
        process.undelivered_report = undelivered_report_path(env[ENV_TRACE_FILE])
    instrumentor = AutoInstrumentor(agent)
    instrumentor.instrument()
    process.at_end.append(instrumentor.uninstrument)  # removes ORT's profile directory
    return Bootstrapped(agent, process, instrumentor)

