"""A test-only zygote: ``python -m lightning_gpt ...`` child processes forked from one that imported it already.

Each ``python -m lightning_gpt`` child a test starts pays 4.5-5 CPU-seconds of imports (torch, Lightning, jsonargparse)
before it runs a line of the command. Here one process per test process (each pytest-xdist worker) imports the
command's modules once and waits; each ``popen``/``run`` asks it to ``fork``, and the fork becomes the command: a real
process with its own pid, exit status, signals, session and the test's pipes or files as its stdin/stdout/stderr,
running ``lightning_gpt.__main__`` as ``__main__`` and ending through the interpreter's normal exit (``atexit``,
threads joined, streams flushed; an uncaught exception's traceback and exit status 1, a signal's negative status).
A forked command that starts more ranks (Lightning's ``_SubprocessScriptLauncher``: ``python -m lightning_gpt.__main__
...`` with ``LOCAL_RANK`` set) asks the same zygote to fork them too (``_fork_ranks``): rank 1 of a two-device fit costs
no second import of torch and Lightning. Each is still its own process, with the environment, directory and standard
streams Lightning gives it, in rank 0's process group (a fresh interpreter stands in where rank 0 left that group).
Before it runs, the fork takes the call's environment, working directory and ``PYTHONPATH`` (at the front of
``sys.path``), reseeds ``random`` and NumPy from the OS, and forgets ``tempfile``'s cached folder.

A call falls back to a plain ``subprocess.Popen`` (a fresh interpreter) when its command is not ``[sys.executable,
"-m", "lightning_gpt", ...]``, when its environment differs from the zygote's in a variable that may be read at import
time (anything outside ``RUNTIME_VARIABLES`` / ``RUNTIME_PREFIXES``; a warning names it; when this process's own
environment changed so, the zygote is started again with it first), without ``os.pidfd_open`` (not Linux), or with
``LIGHTNING_GPT_TEST_ZYGOTE=0``: run a file with that to check that its tests pass the same with fresh interpreters.
Tests that look at start-up itself (import times, which modules a command imports) keep using ``subprocess``.

What differs from a fresh interpreter: the ``WARM`` modules are imported already (whatever the command), the string
hash seed is the zygote's, and an uncaught exception's traceback starts with the zygote's frames.

The returned object has the ``subprocess.Popen`` methods the tests use (``pid``, ``returncode``, ``poll``, ``wait``,
``communicate``, ``send_signal``, ``terminate``, ``kill``, ``stdout``/``stderr`` pipes); the zygote reaps the child and
sends its exit status and CPU time (``children_cpu()``, read by ``benchmarks/pytest_cpu_times.py``).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any, Optional, Union

PYTHON = sys.executable
COMMAND = (PYTHON, "-m", "lightning_gpt")
# What the zygote imports before it forks: the modules every command of the tests reaches.
WARM = (
    "lightning_gpt.cli",
    "lightning_gpt.cli.fit",
    "lightning_gpt.cli.generate",
    "lightning_gpt.cli.export",
    "lightning_gpt.training",
    "lightning_gpt.training.module",
    "lightning_gpt.io.checkpoint",
)
# Variables read when a command runs, not when its modules are imported: a call may set them to anything.
RUNTIME_VARIABLES = {"PYTEST_CURRENT_TEST", "TMPDIR", "PYTHONPATH", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"}
RUNTIME_VARIABLES |= {"RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"}
# PL_: Lightning's own (PL_GLOBAL_SEED, which an in-process fit of an earlier test sets in this process); AWS_: read by
# botocore when a session or client is made (the object-store tests' endpoint and credentials).
RUNTIME_PREFIXES = ("LIGHTNING_GPT_", "DATA_OPTIMIZER_", "SLURM_", "PL_", "AWS_")

RANK_MODULES = ("lightning_gpt", "lightning_gpt.__main__")  # `python -m` of either runs the command

_lock = threading.Lock()
_zygote: Optional[tuple[subprocess.Popen, socket.socket, dict[str, str]]] = None
_retired: list[subprocess.Popen] = []  # zygotes replaced (or stopped) whose children may still run
_child_cpu = 0.0


def children_cpu() -> float:
    """CPU-seconds (user + system) of the forked children that ended so far (the zygote reaps them, not this one)."""
    return _child_cpu


def _enabled() -> bool:
    """On unless ``LIGHTNING_GPT_TEST_ZYGOTE=0``, where the zygote can wait on its children's pidfds (Linux 5.3+)."""
    return os.environ.get("LIGHTNING_GPT_TEST_ZYGOTE", "1") != "0" and hasattr(os, "pidfd_open")


def _zygote_env() -> dict[str, str]:
    from tests.helpers import python_env

    return python_env()


def _start() -> tuple[subprocess.Popen, socket.socket, dict[str, str]]:
    """The zygote, started (again) when there is none or when this process's own environment has changed since in a
    variable read at import time (an in-process test sets some: ``LITDATA_DISABLE_VERSION_CHECK``...). A replaced
    zygote forks no more and ends once its running children have."""
    global _zygote
    env = _zygote_env()
    if _zygote is not None and (_zygote[0].poll() is not None or _import_time_differences(env, _zygote[2])):
        _zygote[1].close()
        _retired.append(_zygote[0])
        _zygote = None
    if _zygote is None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        address = f"@lightning_gpt_test_zygote_{os.getpid()}_{len(_retired)}_{time.monotonic_ns()}"
        proc = subprocess.Popen(
            [PYTHON, "-m", "tests.zygote", str(theirs.fileno()), address], env=env, pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        ready = ours.recv(64)
        if ready != b"ready":
            raise RuntimeError(f"the test zygote did not start (exit status {proc.wait()})")
        if _zygote is None and not _retired:
            atexit.register(_stop)
        _zygote = (proc, ours, env)
    return _zygote


def _stop() -> None:
    """Close the zygotes' sockets (each ends once its children have) and wait for them (10 s each, then SIGKILL)."""
    global _zygote
    if _zygote is not None:
        _zygote[1].close()
        _retired.append(_zygote[0])
        _zygote = None
    while _retired:
        proc = _retired.pop()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _import_time_differences(env: dict[str, str], zygote_env: dict[str, str]) -> list[str]:
    """The variables of ``env`` outside ``RUNTIME_VARIABLES`` / ``RUNTIME_PREFIXES`` that differ from the zygote's."""
    return [
        f"{key}={env.get(key)!r} (the zygote has {zygote_env.get(key)!r})"
        for key in sorted(set(env) | set(zygote_env))
        if env.get(key) != zygote_env.get(key) and key not in RUNTIME_VARIABLES and not key.startswith(RUNTIME_PREFIXES)
    ]


def _forkable(args: list[str], cwd: str, env: dict[str, str], zygote_env: dict[str, str], warn: bool = True) -> bool:
    """Whether the zygote can stand for a fresh interpreter here; a warning names what rules it out (except a command
    other than ``python -m lightning_gpt``, which the zygote never runs)."""
    if len(args) < 3 or (args[0], args[1]) != (PYTHON, "-m") or args[2] not in RANK_MODULES:
        return False
    # The zygote imported lightning_gpt from its PYTHONPATH: the child's path must find that same copy first.
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    why = (
        [f"PYTHONPATH={env.get('PYTHONPATH')!r}"]
        if not all(p in path or p == cwd for p in zygote_env["PYTHONPATH"].split(os.pathsep) if p)
        else []
    )
    why += _import_time_differences(env, zygote_env)
    if why and warn:
        import warnings

        warnings.warn(f"tests/zygote.py: a fresh interpreter for {args[3:5]}: {', '.join(why)}", stacklevel=3)
    return not why


class ZygoteProcess:
    """A forked ``python -m lightning_gpt`` child, driven like a ``subprocess.Popen``."""

    def __init__(self, args: list[str], pid: int, conn: socket.socket, pipes: dict[str, Optional[IO]], text: bool):
        self.args, self.pid, self.returncode = args, pid, None
        self._conn, self._text = conn, text
        self.stdin, self.stdout, self.stderr = pipes["stdin"], pipes["stdout"], pipes["stderr"]
        self._out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def _status(self, timeout: Optional[float]) -> Optional[int]:
        global _child_cpu
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                message = self._conn.recv(256)
            except (TimeoutError, BlockingIOError):
                return None
            if not message:
                raise RuntimeError(f"the test zygote ended before reporting child {self.pid}")
            status = json.loads(message)
            self.returncode = status["returncode"]
            _child_cpu += status["cpu_s"]
            self._conn.close()
        return self.returncode

    def poll(self) -> Optional[int]:
        return self._status(0.0)

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def communicate(self, input: Any = None, timeout: Optional[float] = None) -> tuple[Any, Any]:
        """Read the pipes to their end (kept across a ``TimeoutExpired``), then wait for the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        open_pipes = {name: getattr(self, name) for name in self._out if getattr(self, name) is not None}
        with selectors.DefaultSelector() as sel:
            for name, pipe in open_pipes.items():
                sel.register(pipe.fileno(), selectors.EVENT_READ, name)
            while sel.get_map():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(left)
                if not events and left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                for key, _ in events:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self._out[key.data] += chunk
                    else:
                        sel.unregister(key.fd)
        for name, pipe in open_pipes.items():
            pipe.close()
            setattr(self, name, None)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        raw = [bytes(self._out[n]) if n in open_pipes else None for n in ("stdout", "stderr")]
        results: list[Any] = [None if r is None else _translate(r) for r in raw] if self._text else raw
        return results[0], results[1]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # it ended (reaped by the zygote) before its status reached us: as Popen does
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> ZygoteProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        self.wait()


def _translate(data: bytes) -> str:
    """Bytes to text as ``subprocess`` does in text mode (the locale's encoding, universal newlines)."""
    import locale

    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


Stream = Union[None, int, IO]


def popen(
    args: list[Any],
    *,
    cwd: Any = None,
    env: Optional[dict[str, str]] = None,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    text: bool = False,
    start_new_session: bool = False,
    file_size_limit: Optional[int] = None,
) -> Union[ZygoteProcess, subprocess.Popen]:
    """``subprocess.Popen(args, ...)`` for ``[sys.executable, "-m", "lightning_gpt", ...]``, forked from the zygote.

    Args:
        args: the command line (``str()`` of each item); ``cwd``: its working directory (default: this one);
        env: its whole environment (default: this process's); ``stdin``/``stdout``/``stderr``: ``None`` (this
        process's), ``subprocess.PIPE``, ``subprocess.DEVNULL``, ``subprocess.STDOUT`` (stderr only) or an open file;
        text: pipes read as text; start_new_session: the child calls ``setsid()`` (its pid is its process group's).
        file_size_limit: bytes, the child's ``RLIMIT_FSIZE`` (``ulimit -f``) with ``SIGXFSZ`` ignored, so that a write
        past it fails with ``EFBIG`` (``None``: no limit set).

    Raises:
        RuntimeError: the zygote died.
    """
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    where = os.path.abspath(cwd or os.getcwd())
    with _lock:
        zygote = _start() if _enabled() else None
        if zygote is None or not _forkable(args, where, env, zygote[2]):
            limit = None if file_size_limit is None else functools.partial(_limit_file_size, file_size_limit)
            return subprocess.Popen(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                                    start_new_session=start_new_session, preexec_fn=limit)  # fmt: skip
        fds: list[int] = []
        close: list[int] = []
        pipes: dict[str, Optional[IO]] = {}
        for name, spec, default in (("stdin", stdin, 0), ("stdout", stdout, 1), ("stderr", stderr, 2)):
            pipes[name] = None
            if spec is None:
                fds.append(default)
            elif spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                fds.append(fd)
                close.append(fd)
            elif spec == subprocess.STDOUT:
                fds.append(fds[1])
            elif spec == subprocess.PIPE:
                read, write = os.pipe()
                child, mine = (read, write) if name == "stdin" else (write, read)
                fds.append(child)
                close.append(child)
                mode = ("w" if name == "stdin" else "r") if text else ("wb" if name == "stdin" else "rb")
                pipes[name] = open(mine, mode)
            else:
                fds.append(spec if isinstance(spec, int) else spec.fileno())
        request = {"argv": args[3:], "cwd": where, "env": env, "new_session": start_new_session}
        request["file_size_limit"] = file_size_limit
        try:
            return _request(zygote[1], request, fds, args, pipes, text)
        finally:
            for fd in close:
                os.close(fd)


def _request(
    channel: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    args: list[str],
    pipes: dict[str, Optional[IO]],
    text: bool,
) -> ZygoteProcess:
    """Send one fork request (and the child's stdin/stdout/stderr ``fds``) over ``channel``; the forked child."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(channel, [json.dumps(request).encode()], [theirs.fileno(), *fds])
    theirs.close()
    reply = json.loads(ours.recv(256) or b"{}")
    if "pid" not in reply:  # the zygote died, or the child before it was set up (its status instead)
        raise RuntimeError(f"the test zygote could not start {args[3:5]}: {reply}")
    return ZygoteProcess(args, reply["pid"], ours, pipes, text)


def run(
    args: list[Any],
    *,
    cwd: Any = None,
    env: Optional[dict[str, str]] = None,
    capture_output: bool = False,
    text: bool = False,
    timeout: Optional[float] = None,
    input: Any = None,
    stdout: Stream = None,
    stderr: Stream = None,
    file_size_limit: Optional[int] = None,
) -> subprocess.CompletedProcess:
    """``subprocess.run`` through ``popen``: on ``timeout`` the child is killed and ``TimeoutExpired`` raised."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    stdin = subprocess.PIPE if input is not None else None
    proc = popen(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                 file_size_limit=file_size_limit)  # fmt: skip
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)


# --- the zygote process itself -----------------------------------------------------------------------------------


def _serve(control: socket.socket) -> tuple[dict[str, Any], list[int], int]:
    """Fork one child per request (which reports its pid once it is set up: ``_become``); report each child's exit
    status when it ends. Returns only in a child: the request, its stdin/stdout/stderr and its reply socket."""
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    # Forked commands ask here for their other ranks (one connection, one request each).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(sys.argv[2].replace("@", "\0", 1))
    listener.listen(16)
    sel.register(listener, selectors.EVENT_READ, "listen")
    control.send(b"ready")
    while True:
        for key, _ in sel.select():
            if key.data is None or key.data == "listen":
                asker = control if key.data is None else listener.accept()[0]
                message, fds, _, _ = socket.recv_fds(asker, 1 << 20, 8)
                if asker is not control:
                    asker.close()
                if not message:
                    if asker is control:  # the test process is done with this zygote (or gone): end after the children
                        sel.unregister(control)
                        if not _busy(sel):
                            os._exit(0)
                    continue
                conn_fd, stdio = fds[0], fds[1:]
                pid = os.fork()
                if pid == 0:  # the child: nothing of the zygote's stays open
                    for other in list(sel.get_map().values()):
                        if isinstance(other.data, tuple):
                            os.close(other.fd)
                            other.data[1].close()
                    sel.close()
                    control.close()
                    listener.close()
                    return json.loads(message), stdio, conn_fd
                for fd in fds[1:]:
                    os.close(fd)
                conn = socket.socket(fileno=conn_fd)
                sel.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, conn))
            else:
                pid, conn = key.data
                _, status, usage = os.wait4(pid, 0)
                sel.unregister(key.fd)
                os.close(key.fd)
                cpu = usage.ru_utime + usage.ru_stime
                try:
                    conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "cpu_s": cpu}).encode())
                except OSError:
                    pass  # the test no longer listens
                conn.close()
                if not _busy(sel):  # the last child of a zygote no longer asked for more
                    os._exit(0)


class _RankSubprocess:
    """The ``subprocess`` module as Lightning's launchers see it in a forked command: a ``Popen`` of another rank of
    the same command (``python -m lightning_gpt.__main__ ...``, Lightning's ``_basic_subprocess_cmd``) is forked from
    the zygote that forked this one; anything else, or a rank whose environment rules the zygote out (``_forkable``),
    or a command that left the zygote's process group (a test's ``killpg`` must reach every rank), is a plain
    ``subprocess.Popen``."""

    def __init__(self, address: str, zygote_env: dict[str, str], pgid: int) -> None:
        self.address, self.zygote_env, self.pgid = address, zygote_env, pgid

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, args: list[Any], env: Optional[dict[str, str]] = None, cwd: Any = None, **kwargs: Any) -> Any:
        args = [str(a) for a in args]
        env = dict(os.environ if env is None else env)
        where = os.path.abspath(cwd or os.getcwd())
        if kwargs or os.getpgid(0) != self.pgid or not _forkable(args, where, env, self.zygote_env, warn=False):
            return subprocess.Popen(args, env=env, cwd=cwd, **kwargs)
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]  # a fresh rank inherits rank 0's `ulimit -f`: so here
        request = {"argv": args[3:], "cwd": where, "env": env, "new_session": False}
        request["file_size_limit"] = None if limit == resource.RLIM_INFINITY else limit
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as channel:
            channel.connect(self.address.replace("@", "\0", 1))
            return _request(channel, request, [0, 1, 2], args, {"stdin": None, "stdout": None, "stderr": None}, False)


def _fork_ranks(address: str, zygote_env: dict[str, str], pgid: int) -> None:
    """In a forked command: Lightning's launchers start the command's other ranks through ``_RankSubprocess``."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    shim = _RankSubprocess(address, zygote_env, pgid)
    for module in (fabric_launcher, pytorch_launcher):
        module.subprocess = shim  # type: ignore[attr-defined]


def _busy(sel: selectors.BaseSelector) -> bool:
    """Whether the zygote still has work: the test process may ask for more, or a child runs (and may ask for its
    other ranks)."""
    return any(key.data is None or isinstance(key.data, tuple) for key in sel.get_map().values())


def _limit_file_size(max_bytes: int) -> None:
    """``ulimit -f``: a write past ``max_bytes`` fails with ``EFBIG`` (``SIGXFSZ`` ignored, not the process killed)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def _become(request: dict[str, Any], stdio: list[int], reply: int) -> None:
    """In the forked child: the call's session, streams, directory, environment, ``sys.path`` and ``sys.argv``; then
    its pid to the caller (as ``Popen`` returns once the child is set up and ``exec`` succeeded)."""
    import random
    import tempfile

    if request["new_session"]:
        os.setsid()
    if request["file_size_limit"] is not None:
        _limit_file_size(request["file_size_limit"])
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    old_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ.clear()
    os.environ.update(request["env"])
    new_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    rest = [p for p in sys.path[1:] if p not in old_path]
    sys.path[:] = [request["cwd"], *new_path, *rest]  # as `python -m` builds it: the directory, PYTHONPATH, site
    sys.argv[:] = ["-m", *request["argv"]]
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    tempfile.tempdir = None
    with socket.socket(fileno=reply) as conn:
        conn.send(json.dumps({"pid": os.getpid()}).encode())


def _main() -> None:
    import importlib

    control = socket.socket(fileno=int(sys.argv[1]))
    for name in WARM:
        importlib.import_module(name)
    for name in ("lightning.fabric.strategies.launchers.subprocess_script",
                 "lightning.pytorch.strategies.launchers.subprocess_script"):  # fmt: skip
        importlib.import_module(name)
    zygote_env, address, pgid = dict(os.environ), sys.argv[2], os.getpgid(0)
    import gc

    gc.collect()
    gc.freeze()  # the imported objects stay out of the children's collections (each would copy every page it touches)
    if threading.active_count() != 1:  # a fork copies only the calling thread
        raise RuntimeError(f"the zygote must not run threads before it forks: {threading.enumerate()}")
    _become(*_serve(control))
    _fork_ranks(address, zygote_env, pgid)
    import runpy

    runpy.run_module("lightning_gpt", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
