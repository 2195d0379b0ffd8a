"""Run code written by a model, contained (appendix D: HumanEval and MBPP pass@k).

A code benchmark runs what a model wrote: the completion, then the tests. Such
code can loop forever, eat the memory, fill the disk, fork until the machine
stops, delete files or call home, by mistake far more often than by malice.
``run_code(source, limits)`` runs one program in a fresh ``python -I`` process
and says how it ended (an ``Outcome``); ``run_many`` runs a list in parallel.

Layers, outermost first:

- **A separate process** with a clean slate: no inherited environment variables
  (so no API keys or tokens to read), stdin closed, its own empty work folder
  (removed afterwards, however the run ended), its own session, so the whole
  process group is killed at the wall-clock deadline (``timeout_s``).
- **Namespaces** (Linux, ``unshare``): a new *network* namespace with no
  interface up (no connection anywhere, not even to localhost); a new *PID*
  namespace whose first process is ours, so when it ends the kernel kills every
  process the program started (a fork bomb ends with it); a new *mount*
  namespace in which the whole file tree is read-only and /tmp, /var/tmp,
  /dev/shm and the work folder are one private in-memory file system of
  ``disk_bytes``, gone with the run.
- **No privileges**: run as root, the program becomes user ``nobody`` (65534),
  who may write none of root's files and to whom ``RLIMIT_NPROC`` applies (the
  kernel does not count processes for root). Run as a user, the program keeps
  that user but holds no capability: it cannot undo the mounts.
- **Resource limits** (``setrlimit``, kept by every process it starts):
  ``cpu_s`` (RLIMIT_CPU: a busy loop is stopped even if the wall clock is
  generous), ``memory_bytes`` (RLIMIT_AS: Python raises ``MemoryError``),
  ``file_bytes`` (RLIMIT_FSIZE: no file, the printed output included, grows
  past it), ``processes`` (RLIMIT_NPROC: a fork bomb hits a wall), no core files.
- **The guard** (``guard=True``): inside the program's process, functions that
  start programs, send signals, delete or rename files, change permissions or
  open connections are replaced by ones that raise ``PermissionError``, as
  OpenAI's HumanEval harness does. It turns a stray ``os.system`` into a clear
  failure, but it is a speed bump, not a wall: ``ctypes`` or a saved reference
  gets around it. The layers above are the wall.

How a run ends: ``passed`` only if the whole source ran to its end. A random
nonce, sent on stdin, is reported back on a pipe only after ``exec`` returns,
so ``sys.exit(0)`` or ``os._exit(0)`` halfway is not a pass. ``failed``: it
raised (``SystemExit`` included); ``timed out``: the wall clock or the CPU
limit; ``crashed``: killed by a signal, or ended without a report.

What this does *not* protect against: it is not a security boundary against
a determined attacker (kernel exploits, side channels, a program that finds the
nonce in its own memory and fakes a pass); the program may use all of its CPU,
memory and ``timeout_s`` and so slow the machine within those limits; it can
read any file its user may read (as ``nobody``: world-readable files only).
Without ``unshare`` (macOS, or kernels without user namespaces; see
``isolation()``) only the process, ``nobody`` (as root), the limits and the
guard remain: no network or mount isolation, a process that calls ``setsid``
may outlive the deadline, and run by a plain user, a program with the guard
off may write, signal and read (``/proc``) whatever that user may. On kernels
before 5.14, or when run as root, RLIMIT_NPROC counts every process of the
program's user, so parallel runs share it.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import inspect
import json
import linecache
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from minillm.errors import ConfigError

PREFIX = "minillm-sandbox-"  # of each run's work folder in tempfile.gettempdir()
NOBODY = 65534  # the user a program run by root becomes
STATUSES = ("passed", "failed", "timed out", "crashed")


@dataclass(frozen=True)
class Limits:
    """What one program may use; every run gets all of them (see the module docstring)."""

    timeout_s: float = 10.0  # wall clock; the whole process tree is killed after it
    cpu_s: int = 10  # RLIMIT_CPU, seconds of CPU per process
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space) per process
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: the largest file it may write
    processes: int = 32  # RLIMIT_NPROC: processes and threads of its user
    network: bool = False  # False: no network (a new network namespace where available)
    guard: bool = True  # second layer: dangerous functions raise PermissionError
    disk_bytes: int = 64 << 20  # all it may write to its folder and /tmp (namespaces only)
    output_chars: int = 2000  # how much of the end of its output is kept

    def __post_init__(self) -> None:
        timeout = self.timeout_s
        # upper bounds: what the sandbox's alarm (a C int of seconds) and the kernel's limits (CPU time in 64-bit ns) hold
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 1e9:
            raise ConfigError(f"Limits.timeout_s must be a positive number of seconds up to 1e9, got {timeout!r}")
        for name in ("cpu_s", "memory_bytes", "file_bytes", "processes", "disk_bytes", "output_chars"):
            value, (most, shown) = getattr(self, name), (10**9, "1e9") if name == "cpu_s" else (2**62, "2**62")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ConfigError(f"Limits.{name} must be a whole number from 1 to {shown}, got {value!r}")
        for name in ("network", "guard"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"Limits.{name} must be True or False, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Outcome:
    """How one program ended: ``status`` is one of ``STATUSES``; ``error`` says why it did not pass."""

    status: str  # "passed" | "failed" | "timed out" | "crashed"
    error: str = ""  # "AssertionError: x", "MemoryError", "SystemExit: 0", "killed by SIGKILL", ...
    seconds: float = 0.0  # wall clock, start to end
    output: str = ""  # the end of what it printed (stdout and stderr), at most ``output_chars``

    @property
    def passed(self) -> bool:
        """True if the program ran to its end without raising."""
        return self.status == "passed"


def run_code(source: str, limits: Limits | None = None) -> Outcome:
    """Run the Python program ``source`` in the sandbox and return how it ended."""
    _check_sources([source])
    return _run(source, _check_limits(limits), namespaces=isolation()["pids"])


def run_many(sources: Sequence[str], limits: Limits | None = None, workers: int | None = None, progress: bool = False) -> list[Outcome]:
    """``run_code`` for each source, ``workers`` at a time (default: one per CPU); outcomes in input order.

    Each run has its own process, folder, nonce and namespaces, so the threads
    (each just waits on its process) share nothing. ``progress`` shows a tqdm bar.
    """
    sources = _check_sources(sources)
    limits = _check_limits(limits)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"run_many needs workers >= 1 (a whole number), got {workers!r}")
    namespaces = isolation()["pids"]  # probed once here, not by every thread at once
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        outcomes = pool.map(lambda source: _run(source, limits, namespaces), sources)
        if progress:
            from tqdm.auto import tqdm  # only when asked for

            outcomes = tqdm(outcomes, total=len(sources), desc="sandbox", unit="program")
        return list(outcomes)
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C: the runs under way end by their deadline, no new ones start


def isolation() -> dict[str, bool]:
    """What this machine gives the sandbox: ``{"network", "pids", "mount", "drop_user"}`` -> bool.

    The namespaces come all or none (one ``unshare`` makes them), found once by
    running a tiny program in them. ``drop_user``: the program runs as another
    user, ``nobody`` (possible when we are root; otherwise it runs as us, never as root).
    """
    namespaces = _namespaces_work()
    return {"network": namespaces, "pids": namespaces, "mount": namespaces, "drop_user": os.geteuid() == 0}


@functools.cache
def _namespaces_work() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = _run("pass", Limits(timeout_s=60), namespaces=True)
    if not probe.passed:
        why = f"{probe.error}; {probe.output.strip()[-300:]}"
        warnings.warn(f"sandbox: no namespaces here ({why}); programs run with the limits and the guard only", stacklevel=3)
    return probe.passed


def _check_sources(sources: Sequence[str]) -> list[str]:
    if isinstance(sources, str):
        raise ConfigError("run_many takes a list of sources (for one program, use run_code)")
    try:
        sources = list(sources)
    except TypeError:
        raise ConfigError(f"run_many takes a list of sources, got {type(sources).__name__}") from None
    for source in sources:
        if not isinstance(source, str):
            raise ConfigError(f"the sandbox runs Python source given as a str, got {type(source).__name__}")
    return sources


def _check_limits(limits: object) -> Limits:
    if limits is not None and not isinstance(limits, Limits):
        raise ConfigError(f"limits must be a sandbox.Limits (or None for the defaults), got {type(limits).__name__}")
    return limits or Limits()


# ---------------------------------------------------------------- the parent: start, wait, read the reports


def _run(source: str, limits: Limits, namespaces: bool) -> Outcome:
    """One run: a fresh folder, the sandbox process, its reports; the folder is removed however it ends."""
    nonce, workdir = secrets.token_hex(16), tempfile.mkdtemp(prefix=PREFIX)
    uid = NOBODY if os.geteuid() == 0 else None
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)  # without namespaces, nobody works in it directly
        read_end, write_end = os.pipe()  # reports come back on this pipe, never mixed with the output
        with open(read_end, "rb", buffering=0) as reports, tempfile.TemporaryFile() as output:  # output: unnamed, capped by RLIMIT_FSIZE
            config = {"workdir": workdir, "uid": uid, "namespaces": namespaces, "report_fd": write_end, **asdict(limits)}
            command = [*_unshare(namespaces, limits.network), sys.executable, "-I", "-B", "-c", _child_source(), json.dumps(config)]
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}  # nothing of ours
            start = time.monotonic()
            try:
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                           pass_fds=(write_end,), cwd=workdir, env=env, start_new_session=True)  # fmt: skip
            finally:
                os.close(write_end)  # the sandbox holds its own copy
            try:
                try:
                    process.stdin.write(f"{nonce}\n{source}".encode("utf-8", "surrogatepass"))
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # it ended before reading: the outcome says how
                timed_out = _wait(process, limits.timeout_s)
            finally:
                _kill_group(process)  # also on Ctrl-C or any error here
            seconds = time.monotonic() - start
            report = _read_reports(reports.fileno(), nonce)
            return _outcome(report, timed_out, limits, seconds, _tail(output, limits.output_chars), process.returncode)
    finally:
        _remove(workdir)


def _unshare(namespaces: bool, network: bool) -> list[str]:
    """The ``unshare`` command that puts the program in new namespaces (nothing without them)."""
    if not namespaces:
        return []
    flags = ["--pid", "--fork", "--kill-child", "--mount-proc"]  # --mount-proc: a mount namespace with its own /proc
    if not network:
        flags.append("--net")
    if os.geteuid() != 0:
        flags = ["--user", "--map-root-user", *flags]  # a user may make namespaces inside a user namespace
    return ["unshare", *flags, "--"]


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the sandbox to end; True if the deadline came first.

    ``WNOWAIT`` leaves the ended process unreaped, so its process-group id cannot
    be reused by another process before ``_kill_group`` has used it.
    """
    deadline = time.monotonic() + timeout_s
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.01)
    return False


def _kill_group(process: subprocess.Popen) -> None:
    """Kill every process of the sandbox's group (its namespace dies with its first process), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # none left
    process.wait()


def _read_reports(read_end: int, nonce: str) -> dict:
    """The reports that carry this run's nonce, merged (the first value of a key wins)."""
    os.set_blocking(read_end, False)
    try:
        lines = os.read(read_end, 1 << 16).splitlines()
    except BlockingIOError:
        lines = []
    report: dict = {}
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("nonce") == nonce:
            report = {**message, **report}
    return report


def _outcome(report: dict, timed_out: bool, limits: Limits, seconds: float, output: str, returncode: int | None) -> Outcome:
    """The program's own report if it made one; otherwise what its first process saw, or the deadline."""
    status, error = report.get("status"), str(report.get("error", ""))[:1000]
    if status not in STATUSES:
        if timed_out:
            status, error = "timed out", f"timed out after {limits.timeout_s:g} s"
        elif report.get("signal") == signal.SIGXCPU or report.get("cpu_s", 0) >= limits.cpu_s:
            status, error = "timed out", f"CPU time limit of {limits.cpu_s} s exceeded"
        elif "signal" in report:
            name = signal.Signals(report["signal"]).name if report["signal"] in signal.valid_signals() else report["signal"]
            status, error = "crashed", f"killed by {name}"
        elif "code" in report:
            status, error = "crashed", f"exited early with status {report['code']}"
        else:
            status, error = "crashed", f"the sandbox ended without a report (exit status {returncode})"
    return Outcome(status, error, round(seconds, 3), output)


def _tail(file, chars: int) -> str:
    """The last ``chars`` characters of the output, read without loading all of it."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - 4 * chars))  # at most 4 bytes a character in UTF-8
    return file.read().decode("utf-8", "replace")[-chars:]


def _remove(folder: str) -> None:
    """Delete the work folder with all the program left in it, read-only folders included."""
    for parent, folders, _ in os.walk(folder):
        for name in folders:
            path = os.path.join(parent, name)
            if not os.path.islink(path):  # never follow a link the program made out of its folder
                try:
                    os.chmod(path, 0o700)
                except OSError:
                    pass
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- the child: the code below runs in the sandbox
# `_child_source` sends these functions to the child as text, after the module's imports:
# they use those modules and each other, nothing else of the parent's.


def _child_main() -> None:
    """The sandbox's first process: private folders, then the program in a child process; report how it ended."""
    config = json.loads(sys.argv[1])
    nonce = sys.stdin.buffer.readline().decode().strip()
    source = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
    if config["namespaces"]:
        _private_folders(config["workdir"], config["disk_bytes"], config["uid"])
    pid = os.fork()
    if pid == 0:
        _run_program(config, nonce, source)  # never returns
    signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))  # should the parent die, the deadline holds
    signal.alarm(math.ceil(config["timeout_s"]) + 2)  # (the parent, when alive, kills it first)
    _, status, usage = os.wait4(pid, 0)
    ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"code": os.waitstatus_to_exitcode(status)}
    message = {"nonce": nonce, "cpu_s": usage.ru_utime + usage.ru_stime, **ended}
    os.write(config["report_fd"], (json.dumps(message) + "\n").encode())
    # Returning ends the PID namespace's first process: the kernel kills all the program left running.


def _private_folders(workdir: str, size: int, uid: int | None) -> None:
    """Make the whole file tree read-only; one fresh in-memory file system at /tmp, /var/tmp, /dev/shm and workdir."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    read_only = (ctypes.c_uint64 * 4)(1, 0, 0, 0)  # struct mount_attr {attr_set = MOUNT_ATTR_RDONLY, ...}
    # mount_setattr (syscall 442 on every architecture, Linux 5.12+) on / and every mount below it (AT_RECURSIVE)
    check(libc.syscall(442, -100, b"/", 0x8000, read_only, ctypes.sizeof(read_only)), "read-only /")
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, f"size={size},mode=1777".encode()), "tmpfs on /tmp")  # nosuid|nodev
    os.mkdir("/tmp/.work", 0o700)
    if uid is not None:
        os.chown("/tmp/.work", uid, uid)
    os.makedirs(workdir, exist_ok=True)  # if it was under /tmp: an empty place to mount on
    for source, target in (("/tmp", "/var/tmp"), ("/tmp", "/dev/shm"), ("/tmp/.work", workdir)):
        if os.path.isdir(target):
            check(libc.mount(source.encode(), target.encode(), None, 4096, None), f"bind {target}")  # MS_BIND


def _reach_library() -> None:
    """Keep the standard library importable after becoming ``nobody``.

    The interpreter may live where ``nobody`` may not enter (``/root/.pyenv``). A
    folder opened now and reached as ``/proc/self/fd/N`` skips that walk; its
    files are world-readable, so ``import`` goes on working.
    """
    if not os.path.isdir("/proc/self/fd"):
        return
    moved = {}
    for i, entry in enumerate(sys.path):
        if os.path.isdir(entry):
            moved[entry] = sys.path[i] = f"/proc/self/fd/{os.open(entry, os.O_PATH | os.O_DIRECTORY)}"
    for module in list(sys.modules.values()):  # packages already imported (encodings) look in their __path__
        path = getattr(module, "__path__", None)
        for j, folder in enumerate(path if isinstance(path, list) else []):
            for old in sorted(moved, key=len, reverse=True):
                if folder == old or folder.startswith(old + os.sep):
                    path[j] = moved[old] + folder[len(old) :]
                    break
    sys.path_importer_cache.clear()


def _drop_privileges(uid: int | None) -> None:
    """Give up root for good: no capability kept or ever regained; become ``uid`` if given."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    if libc:
        for capability in range(64):
            libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP (fails harmlessly past the last one)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: set-user-ID programs (su, mount) grant nothing
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # capability API version 3, this process
    if libc and libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:  # all sets empty: root in a user namespace keeps none
        raise OSError(ctypes.get_errno(), "capset")


def _set_limits(config: dict) -> None:
    """The resource limits, soft = hard so the program cannot raise them (CPU: SIGXCPU, SIGKILL a second later)."""
    wanted = {
        resource.RLIMIT_CPU: (config["cpu_s"], config["cpu_s"] + 1),
        resource.RLIMIT_AS: (config["memory_bytes"],) * 2,
        resource.RLIMIT_FSIZE: (config["file_bytes"],) * 2,
        resource.RLIMIT_NPROC: (config["processes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),  # a crash leaves no core file behind
    }
    for kind, (soft, hard) in wanted.items():
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError):
            if sys.platform == "linux":
                raise  # macOS refuses RLIMIT_AS: there the memory limit is not enforced


def _guard(network: bool) -> None:
    """Second layer: what starts programs, signals, deletes, renames, chmods or connects raises PermissionError."""

    def refuse(name: str):
        def refused(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")

        return refused

    os_names = (
        "system popen fork forkpty kill killpg execl execle execlp execlpe execv execve execvp execvpe posix_spawn posix_spawnp "
        "spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe "
        "remove unlink rmdir removedirs rename renames replace truncate chmod fchmod lchmod chown fchown lchown chroot"
    ).split()
    blocked = {
        os: os_names,
        sys.modules[os.name]: os_names,  # posix, where os copies them from: reloading os would bring them back
        sys.modules["_posixsubprocess"]: ["fork_exec"],  # what subprocess and multiprocessing use underneath
        subprocess: "Popen run call check_call check_output getoutput getstatusoutput".split(),
        shutil: ["rmtree", "move", "chown"],
        builtins: ["exit", "quit"],
    }
    if not network:
        blocked[socket.socket] = ["connect", "connect_ex", "bind", "sendto", "sendmsg"]
    for owner, names in blocked.items():
        for name in names:
            if hasattr(owner, name):
                setattr(owner, name, refuse(f"{owner.__name__}.{name}"))


def _run_program(config: dict, nonce: str, source: str) -> None:
    """The program's process: no privileges, the limits, the guard; run the source, report, exit."""
    write, dumps, exit_now, getpid = os.write, json.dumps, os._exit, os.getpid  # kept out of the program's reach
    fd, me = config["report_fd"], os.getpid()

    def report(**fields) -> None:
        if getpid() == me:  # a process it forked that ran on to the end does not speak for it
            write(fd, (dumps({"nonce": nonce, **fields}) + "\n").encode())

    try:
        os.chdir(config["workdir"])
        if config["uid"] is not None:
            _reach_library()
        _drop_privileges(config["uid"])
        _set_limits(config)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the program reads an empty stdin
        os.close(devnull)
        sys.stdout.reconfigure(line_buffering=True)  # what it printed survives a kill at the deadline
        if config["guard"]:
            _guard(config["network"])
    except BaseException as error:
        report(status="crashed", error=f"sandbox setup failed: {type(error).__name__}: {error}")
        exit_now(70)
    linecache.cache["<program>"] = (len(source), None, source.splitlines(True), "<program>")  # for its tracebacks
    program = sys.modules["__main__"] = types.ModuleType("__main__")  # its own __main__ (for pickle, `import __main__`)
    try:
        exec(compile(source, "<program>", "exec"), program.__dict__)
    except BaseException as error:
        try:
            text = f"{error.code}" if isinstance(error, SystemExit) else str(error)
        except BaseException:
            text = "(a message that cannot be shown)"
        try:
            sys.__stdout__.flush()  # what it printed before the traceback, in order
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)  # from the program's frame on
        except BaseException:
            pass  # e.g. the output is at RLIMIT_FSIZE
        # at most 1000 characters (as the parent keeps): a report longer than the pipe's buffer would block until the deadline
        report(status="failed", error=(f"{type(error).__name__}: {text}" if text else type(error).__name__)[:1000])
        exit_now(1)
    try:
        sys.__stdout__.flush()
        sys.__stderr__.flush()
    except BaseException:
        pass
    report(status="passed")
    exit_now(0)  # at once: no atexit handlers, no waiting for the program's threads


@functools.cache
def _child_source() -> str:
    """The child's script: this module's standard-library imports, the functions above, a call of ``_child_main``."""
    imports = "import builtins, ctypes, json, linecache, math, os, resource, shutil, signal, socket, subprocess, sys, traceback, types\n"
    functions = (_child_main, _private_folders, _reach_library, _drop_privileges, _set_limits, _guard, _run_program)
    return "from __future__ import annotations\n" + imports + "\n".join(inspect.getsource(f) for f in functions) + "_child_main()\n"


__all__ = ["Limits", "Outcome", "PREFIX", "isolation", "run_code", "run_many"]
