"""The JIT service: no visible Numba compile on a first call.

A Numba kernel that is neither loaded in this process nor in Numba's on-disk
cache costs seconds to compile (the fused softmax loss ~20 s, a compiled
epoch ~5-15 s on the project's 2-core machine).  Where backend "auto" picked
a Numba kernel and an ahead-of-time twin exists (the Cython kernels: same
rule, same arguments, results checked against the same reference and
against each other in tests/test_jit.py), ``ready(key, dispatcher, args)``
answers whether the Numba kernel can run *now*:

* loaded in this process: yes (the fast path: one dict look-up per call);
* in Numba's disk cache: it is loaded (as Numba itself would, ~0.1 s for the
  largest kernels) and yes;
* otherwise no: the caller serves this call with the twin, and the compile
  is sent to a compile-server process (``python -m optkern._jit``), which
  fills Numba's disk cache.  Later calls load the kernel from the cache once
  the server reports it done, and switch to it.

Why a separate process and not a thread: Numba compiles under one
process-wide lock and holds the GIL for most of a compile, so a background
thread would stall every other first call of a small Numba function (and the
Python work of the caller) behind a 20 s compile.  The server also outlives a
short program: what it started compiling lands in the cache for the next run.

Safety.  Numba writes each cache file to a temporary name and renames it into
place, so a process killed mid-compile leaves at most a stray ``.tmp`` file,
never a half-written entry (an index entry whose data file is missing is a
cache miss).  The server compiles under an exclusive lock file in the cache
directory, so two servers (two programs started together) never write the
same function's index at once; the second finds the first one's entry in the
cache and only loads it.  tests/test_jit.py kills a server mid-compile and
runs two at once.

Modes (``OPTKERN_JIT`` or ``set_mode``): "background" (default, above),
"sync" (always the Numba kernel, compiling in the foreground as before),
"aot" (always the twin, and no compile requested: for tests and
benchmarks that force the twin's path).
"""

import base64
import importlib
import inspect
import json
import os
import pickle
import subprocess
import sys
import threading
import time

MODES = ("background", "sync", "aot")
_mode = os.environ.get("OPTKERN_JIT", "background")
if _mode not in MODES:
    _mode = "background"

_ready = {}          # key -> True once the Numba kernel runs without compiling
_pending = {}        # key -> (dispatcher, sig, request id)
_failed = set()      # keys whose background compile failed: the twin serves them
_done = {}           # request id -> "ok" or an error message (filled by the reader)
_served = {"numba": 0, "twin": 0}
_lock = threading.Lock()
_server = None
_next_id = 0


def set_mode(mode):
    """Set the service mode; returns the previous one (tests, benchmarks)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {list(MODES)}")
    old, _mode = _mode, mode
    return old


def mode():
    return _mode


def stats():
    """Calls served so far by the Numba kernel and by its twin (per ``ready``
    answer), and the compiles still pending."""
    return {"numba": _served["numba"], "twin": _served["twin"], "pending": len(_pending)}


def count_twin():
    """Count one call served by a twin chosen outside ``ready`` (the sparse
    epochs, decided once per fit by a whole-fit warm-up)."""
    _served["twin"] += 1


def forget():
    """Drop this process's knowledge of ready kernels (tests: the next
    ``ready`` looks again; kernels Numba already loaded stay loaded)."""
    with _lock:
        _ready.clear()
        _pending.clear()
        _failed.clear()


def ready(key, dispatcher, args):
    """True when ``dispatcher(*args)`` runs without compiling; else False (and
    a background compile is requested).  ``key`` is the caller's cheap name
    for the signature (kernel and argument kinds): once ready, a key answers
    from a dict."""
    if key in _ready:
        _served["numba"] += 1
        return True
    if _mode == "sync":
        _served["numba"] += 1
        return True
    ok = _slow_ready(key, dispatcher, args)
    _served["numba" if ok else "twin"] += 1
    return ok


_numba_warm = False


def numba_warm():
    """Whether this process has paid Numba's one-time start-up: the target
    context's registries, imported when the first kernel is compiled or
    loaded from the cache (0.1-0.6 s once a process on the 2-core machine).
    A scan whose NumPy form is exact and costs microseconds to a few
    milliseconds (``losses._int_range``, ``losses._all_finite``) runs in
    NumPy until then, so that a process whose kernels are the Cython ones
    (``backend="cython"``, or "auto" before the Numba kernel is ready) never
    pays that start-up for a helper.  True when the answer is unknown (a
    Numba without this attribute): the compiled scan, as before.

    Once True it stays True (a started Numba does not stop): remembered, so
    the scans' calls (one per ``loss_and_grad``) cost a global's read, not
    an import and two attribute lookups."""
    global _numba_warm
    if _numba_warm:
        return True
    try:
        from numba.core.registry import cpu_target
        regs = getattr(cpu_target.target_context, "_registries", None)
    except Exception:   # pragma: no cover - a Numba that moved these
        regs = None
    warm = True if regs is None else bool(regs)
    if warm:
        _numba_warm = True
    return warm


def _signature(dispatcher, args):
    return tuple(dispatcher.typeof_pyval(a) for a in args)


def _slow_ready(key, dispatcher, args):
    if _mode == "aot":
        return False
    with _lock:
        if key in _failed:
            return False
        entry = _pending.get(key)
        if entry is None:
            sig = _signature(dispatcher, args)
            if sig in dispatcher.overloads or _load_cached(dispatcher, sig):
                _ready[key] = True
                return True
            try:
                rid = _request(dispatcher, sig)
            except Exception:   # no server (e.g. no subprocesses): compile here
                _ready[key] = True
                return True
            _pending[key] = (dispatcher, sig, rid)
            return False
        dispatcher_, sig, rid = entry
        status = _done.get(rid)
        if status is None:
            if _server is not None and _server.poll() is not None:
                status = "server exited"
            else:
                return False
        del _pending[key]
        if status == "ok" and _load_cached(dispatcher_, sig):
            _ready[key] = True
            return True
        _failed.add(key)
        return False


def _load_cached(dispatcher, sig):
    """Load ``sig`` from Numba's disk cache into the dispatcher, as
    ``Dispatcher.compile`` does on a cache hit, but never compile."""
    from numba.core.compiler_lock import global_compiler_lock
    try:
        with global_compiler_lock:
            if tuple(sig) in dispatcher.overloads:
                return True
            if not _in_index(dispatcher, sig):
                return False
            cres = dispatcher._cache.load_overload(sig, dispatcher.targetctx)
            if cres is None:
                return False
            if not cres.objectmode:
                dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc,
                                                          [cres.library])
            dispatcher.add_overload(cres)
            return True
    except Exception:
        return False


def _in_index(dispatcher, sig):
    """Whether the cache index lists ``sig``, read without the target
    context's first refresh (which imports Numba's registries, ~0.6 s once a
    process: a cold first call need not pay it only to find an empty cache)."""
    cache = dispatcher._cache
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:
        return False
    if not os.path.exists(cache_file._index_path):
        return False
    key = cache._index_key(sig, dispatcher.targetctx.codegen())
    return key in cache_file._load_index()


def compiled(dispatcher):
    """Whether the dispatcher has any compiled overload loaded, or any entry
    in the disk cache (a coarse test, for kernels served by a whole-fit
    warm-up rather than per signature)."""
    if _mode == "aot":
        return False
    if dispatcher.overloads:
        return True
    cache_file = getattr(dispatcher._cache, "_cache_file", None)
    return cache_file is not None and os.path.exists(cache_file._index_path)


def warm_up_call(fn, *args):
    """Ask the compile server to run ``fn(*args)`` (a module-level function;
    the server compiles synchronously, filling the disk cache).  Returns True
    when the caller should serve its reference meanwhile, False when it
    should run the compiled kernel now ("sync" mode, or no server)."""
    if _mode == "sync":
        return False
    if _mode == "aot":
        return True
    key = ("call", fn.__module__, fn.__qualname__, repr(args)[:200])
    with _lock:
        if key in _pending:
            # still running: serve the reference; finished (and the caller
            # still finds nothing compiled): let the kernel compile here
            return _pending[key][2] not in _done
        try:
            rid = _send({"call": base64.b64encode(pickle.dumps((fn, args))).decode("ascii")})
        except Exception:
            return False
        _pending[key] = (None, None, rid)
    return True


# ------------------------------------------------ foreground compiles, said


class CompileWatch:
    """Announce and time the Numba compiles that still run in the foreground
    (issue 17 item 5): ``OPTKERN_JIT=sync``, an explicit ``backend="numba"``,
    a kernel without a twin.  Cache loads are not compiles (Numba fires no
    event for them).  Use as a context manager::

        with CompileWatch(sys.stderr) as watch:
            ...
        watch.seconds    # wall time spent compiling inside the block

    Each distinct kernel is announced once, at the start of its compile:
    "optkern: compiling kernels for <name> (first use; cached afterwards)".
    Nested compiles (a kernel's callees) count within the outer one.
    """

    def __init__(self, stream=None, announce=True):
        self.stream = sys.stderr if stream is None else stream
        self.announce = announce
        self.seconds = 0.0
        self.names = []
        self._depth = 0
        self._t0 = 0.0
        self._listener = None

    def _name(self, event):
        disp = (event.data or {}).get("dispatcher")
        fn = getattr(disp, "py_func", None)
        if fn is None:
            return "a kernel"
        module = fn.__module__.rsplit(".", 1)[-1].replace("_generated_", "")
        return f"{module}.{fn.__qualname__}"

    def _start(self, event):
        if self._depth == 0:
            self._t0 = time.perf_counter()
            name = self._name(event)
            if name not in self.names:
                self.names.append(name)
                if self.announce:
                    try:
                        self.stream.write(f"optkern: compiling kernels for {name} "
                                          "(first use; cached afterwards)\n")
                        self.stream.flush()
                    except (OSError, ValueError):
                        pass
        self._depth += 1

    def _end(self, event):
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0

    def __enter__(self):
        from numba.core import event as ev

        watch = self

        class _Listener(ev.Listener):
            def on_start(self, event):
                watch._start(event)

            def on_end(self, event):
                watch._end(event)

        self._listener = _Listener()
        ev.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event as ev
        ev.unregister("numba:compile", self._listener)
        return False


# ----------------------------------------------------------------- client


def _where(dispatcher):
    fn = dispatcher.py_func
    return fn.__module__, inspect.getfile(fn), fn.__qualname__


def _request(dispatcher, sig):
    module, path, qualname = _where(dispatcher)
    return _send({"module": module, "path": path, "qualname": qualname,
                  "sig": base64.b64encode(pickle.dumps(sig)).decode("ascii")})


def _send(msg):
    global _next_id
    server = _ensure_server()
    _next_id += 1
    msg["id"] = _next_id
    server.stdin.write(json.dumps(msg) + "\n")
    server.stdin.flush()
    return msg["id"]


def _ensure_server():
    global _server
    if _server is not None and _server.poll() is None:
        return _server
    # its own session: Ctrl-C in the terminal stops the program, not a compile
    # whose result the next run can use (a kill is safe anyway, see above)
    _server = subprocess.Popen(
        [sys.executable, "-m", "optkern._jit"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        start_new_session=True, env=dict(os.environ, OPTKERN_JIT="sync"))
    threading.Thread(target=_read_replies, args=(_server,), daemon=True,
                     name="optkern-jit-replies").start()
    return _server


def _read_replies(server):
    for line in server.stdout:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        _done[msg["id"]] = msg["status"]


def server_pid():
    """The compile server's process id, or None (tests)."""
    return None if _server is None or _server.poll() is not None else _server.pid


def wait(timeout=None):
    """Block until every requested compile has finished (benchmarks, tests,
    and programs that want the cache filled before they exit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _lock:
            ids = [rid for (_, _, rid) in _pending.values()]
        if all(rid in _done for rid in ids) or \
                (_server is not None and _server.poll() is not None):
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# ----------------------------------------------------------------- server


def _lock_path():
    from numba.core.config import CACHE_DIR
    base = CACHE_DIR or os.environ.get("OPTKERN_CACHE_DIR") or \
        os.path.join(os.path.expanduser("~"), ".cache", "optkern")
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, ".optkern-compile.lock")


def _resolve(module, path, qualname):
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            from optkern.kernels._files import load_by_path
            mod = load_by_path(module, path)
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def compile_one(module, path, qualname, sig):
    """Compile (or load) one signature into Numba's disk cache, under the
    cross-process lock."""
    dispatcher = _resolve(module, path, qualname)
    with _compile_lock():
        dispatcher.compile(sig)


class _compile_lock:
    """The cross-process lock around a server's compile (see Safety above)."""

    def __enter__(self):
        self.fh = open(_lock_path(), "a")
        try:
            import fcntl
        except ImportError:     # no flock (Windows): Numba's own renames only
            self.fcntl = None
            return self
        self.fcntl = fcntl
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fcntl is not None:
            self.fcntl.flock(self.fh, self.fcntl.LOCK_UN)
        self.fh.close()


def serve(stdin=sys.stdin, stdout=sys.stdout):
    """The compile server's loop: one JSON request a line in, one reply out.
    Requests still queued when the client exits are compiled all the same
    (they fill the cache for the next run)."""
    for line in stdin:
        msg = {}
        try:
            msg = json.loads(line)
            if "call" in msg:
                fn, args = pickle.loads(base64.b64decode(msg["call"]))
                with _compile_lock():
                    fn(*args)
            else:
                sig = pickle.loads(base64.b64decode(msg["sig"]))
                compile_one(msg["module"], msg["path"], msg["qualname"], sig)
            status = "ok"
        except Exception as exc:   # reported to the client, which keeps the twin
            status = f"{type(exc).__name__}: {exc}"
        try:
            stdout.write(json.dumps({"id": msg.get("id"), "status": status}) + "\n")
            stdout.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass   # the client has gone; keep filling the cache


if __name__ == "__main__":
    serve()
