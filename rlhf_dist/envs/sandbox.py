"""Tool calls and model-written code in a separate, fresh interpreter, every call bounded.

Each call starts `python -I` (isolated: no PYTHONPATH, no user site, no current directory on sys.path) in a
new session, with stdin closed after the request, cwd a fresh temporary directory (removed after), and a
minimal environment. Inside, before any tool or model code runs, it limits itself: RLIMIT_AS (memory),
RLIMIT_CPU, RLIMIT_FSIZE, no core files. The parent reads its output with a wall-clock deadline and a byte
limit and kills the whole session at either, so a tool that hangs, allocates 10 GB, calls os._exit or prints
10 MB ends as an `Outcome`, never as a stuck or dead run.

Model-written code (`run_python`) runs with `-I -S` (the standard library only) under an audit hook
(sys.addaudithook) that refuses: opening a path outside the sandbox directory (reading the standard library
excepted), listing, changing to, renaming or removing anything outside it, starting processes (subprocess,
os.system, exec, fork, spawn), sending signals, sockets, and loading native code through ctypes.

What this does not stop, honestly: audit hooks are not a security boundary. Code that reaches native code
by another route (a bug in CPython, an extension module that does not raise audit events) is not confined;
the standard library stays readable; the limits are per process, not per user; nothing here isolates the
network or the machine's other processes at the kernel level. For untrusted code at scale, run the tool
inside an OS sandbox (containers, namespaces, seccomp) and keep these limits as a second line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# The child's first act: read the request, limit itself, then run the tool or the code.
_CHILD = r"""
import json, os, resource, sys
req = json.loads(sys.stdin.readline())
sys.stdin.close()
for what, value in (("RLIMIT_AS", req["memory_bytes"]), ("RLIMIT_CPU", req["cpu_s"]),
                    ("RLIMIT_FSIZE", req["file_bytes"]), ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, what), (value, value))
if req["kind"] == "call":
    fd = req["result_fd"]
    sys.path[:0] = req["sys_path"]
    import importlib
    module, _, name = req["target"].partition(":")
    try:
        fn = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
        out = {"ok": str(fn(**req["arguments"]))[: req["chars"] + 1]}
    except BaseException as e:
        out = {"error": f"{type(e).__name__}: {e}"[:500]}
    sys.stdout.flush()
    os.write(fd, json.dumps(out).encode())
    os.close(fd)
    sys.exit(0)
def confine(box, lib):
    # Everything the hook reads is captured here, immutable; no name outside refers to it once installed.
    import os.path
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    refused = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.putenv", "os.unsetenv", "sys._getframe",
        "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "pty.spawn"})
    modules = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "mmap", "_multiprocessing"})
    paths = frozenset({"os.listdir", "os.scandir", "os.chdir", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
        "os.symlink", "os.link", "os.chmod", "os.chown", "os.utime", "os.truncate", "shutil.rmtree", "os.walk",
        "glob.glob"})
    real, decode = os.path.realpath, os.fsdecode
    own, readable = (box,), (box, *lib)
    def inside(path, roots):
        if isinstance(path, int):
            return True
        p = real(decode(path))
        return any(p == r or p.startswith(r + "/") for r in roots)
    def hook(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in modules:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & writes)
            if not inside(path, own if writing else readable):
                raise PermissionError(f"sandbox: {path!r} is outside the sandbox")
        elif event in paths:
            for a in args[:2]:
                if isinstance(a, (str, bytes)) and not inside(a, own):
                    raise PermissionError(f"sandbox: {event} outside the sandbox")
    sys.addaudithook(hook)
import os.path, sysconfig, traceback
try:
    code = compile(req.pop("code"), "<tool>", "exec")
except (SyntaxError, ValueError) as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
confine(os.path.realpath(os.getcwd()), tuple({os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}))
del confine, req
try:
    exec(code, {"__name__": "__main__"})
except BaseException as e:
    if isinstance(e, SystemExit):
        raise
    # The model sees its own frames only, not this bootstrap's.
    tb = traceback.TracebackException.from_exception(e)
    tb.stack = traceback.StackSummary.from_list([f for f in tb.stack if f.filename == "<tool>"])
    sys.stderr.write("".join(tb.format()))
    sys.exit(1)
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, from the start of the process (sandbox set-up included)
    output_chars: int = 2000  # what the model sees; more is cut and marked
    memory_mb: int = 1024  # RLIMIT_AS of the child
    cpu_s: int = 10  # RLIMIT_CPU of the child
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file it may write in its sandbox


@dataclasses.dataclass
class Outcome:
    """How one call ended. `status`: ok, error (raised, or exited without an answer), timeout, output (wrote more
    than the limit: stopped). `text`: what the model is shown, bounded and marked when cut."""
    status: str
    text: str
    seconds: float


def truncate(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    return text[:chars] + f"\n[output truncated: more than {chars} characters]"


def call_function(target: str, arguments: dict, limits: Limits) -> Outcome:
    """Run `target` ('package.module:function') with keyword `arguments` in a fresh interpreter; its return
    value, as text, is the outcome. What it prints is read and dropped (bounded by the same byte limit)."""
    r, w = os.pipe()  # _run owns both ends from here (each closed once: another thread may reuse the number)
    req = {"kind": "call", "target": target, "arguments": arguments, "result_fd": w, "chars": limits.output_chars,
           "sys_path": [p for p in sys.path if p]}
    out, status, seconds, result = _run(req, limits, ["-I"], result_pipe=[r, w])
    if status == "ok":
        try:
            answer = json.loads(result.decode() or "null")
        except ValueError:
            answer = None
        if isinstance(answer, dict) and "ok" in answer:
            return Outcome("ok", truncate(str(answer["ok"]), limits.output_chars), seconds)
        if isinstance(answer, dict) and "error" in answer:
            return Outcome("error", f"error: {answer['error']}", seconds)
        return Outcome("error", f"error: the tool's process ended without an answer ({out})", seconds)
    return Outcome(status, out, seconds)


def run_python(code: str, limits: Limits) -> Outcome:
    """Run model-written `code` in a fresh, confined interpreter (module notes); its output (stdout and stderr,
    bounded) and, when it failed, its exit status are the outcome."""
    out, status, seconds, _ = _run({"kind": "code", "code": code}, limits, ["-I", "-S", "-B"])
    return Outcome(status, out, seconds)


def _run(req: dict, limits: Limits, flags: list[str], result_pipe: list[int] | None = None):
    """(text, status, seconds, result bytes). Every path ends the child's whole session and removes its
    sandbox directory."""
    t0 = time.monotonic()
    deadline = t0 + limits.timeout_s
    box = tempfile.mkdtemp(prefix="rlhf-tool-")
    req = {**req, "memory_bytes": limits.memory_mb << 20, "cpu_s": max(1, int(limits.cpu_s)), "file_bytes": limits.file_mb << 20}
    cap = 4 * limits.output_chars + 64  # bytes: up to 4 per character
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, *flags, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=box, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}, start_new_session=True,
            pass_fds=(result_pipe[1],) if result_pipe else (), close_fds=True,
        )
        if result_pipe:
            os.close(result_pipe.pop())  # the child's end
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, result, status = _read(proc, result_pipe[0] if result_pipe else None, deadline, cap)
        if status == "ok":
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = "timeout"
            else:
                if code != 0 and not result:
                    status = "error"
        seconds = time.monotonic() - t0
        text = out.decode(errors="replace")
        if status == "timeout":
            return truncate(text, limits.output_chars) + f"\n[timed out after {limits.timeout_s:g} s]", status, seconds, result
        if status == "output":
            return truncate(text, limits.output_chars) + "\n[stopped: wrote too much output]", status, seconds, result
        text = truncate(text, limits.output_chars)
        if status == "error":
            code = proc.returncode
            why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            text = f"{text}\n[{why}]" if text else f"[{why}]"
        return text, status, seconds, result
    finally:
        if proc is not None:
            _kill(proc)
        for fd in result_pipe or ():
            os.close(fd)
        shutil.rmtree(box, ignore_errors=True)


def _read(proc, result_fd: int | None, deadline: float, cap: int) -> tuple[bytes, bytes, str]:
    """Output and result bytes until both pipes close, the deadline, or more than `cap` bytes of output."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    if result_fd is not None:
        sel.register(result_fd, selectors.EVENT_READ, "result")
    out, result = bytearray(), bytearray()
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(result), "timeout"
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = out if key.data == "out" else result
                buf += chunk
                if len(out) > cap or len(result) > cap + 1024:
                    return bytes(out[:cap]), bytes(result), "output"
        return bytes(out), bytes(result), "ok"
    finally:
        sel.close()


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session: whatever the child started goes too
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc.stdout:
        proc.stdout.close()
