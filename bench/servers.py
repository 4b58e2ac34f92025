"""Run one server process: start it, wait until its port accepts, stop it, always.

Each server gets its own session (process group), so a Ctrl-C in the terminal reaches only the
harness, which then stops the servers itself: SIGTERM, then SIGKILL to the whole group.
"""

import functools
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_POLL = 0.05
_LOG_TAIL_LINES = 8


class ServerError(Exception):
    """A server did not start or did not become ready; the message says why."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


@dataclass(frozen=True)
class Command:
    """How to run a server: its command line and what it adds to the environment."""

    argv: list[str]
    env: dict[str, str] | None = None


def pin_prefix(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` when pinning, else nothing."""
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


class Server:
    """A server process listening on 127.0.0.1:port, used as a context manager."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        cpu: int | None = None,
        *,
        nofile: tuple[int, int] | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        clean_exits: tuple[int, ...] = (0,),
    ) -> None:
        self.name = name
        self.argv = pin_prefix(cpu) + argv
        self.port = port
        self.log_path = log_path
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE for the process, else inherited
        self.cwd = cwd
        self.env = env  # added to this process's environment
        self.clean_exits = clean_exits  # exit codes (Popen's) that mean it stopped as asked
        self.exit_code: int | None = None
        self.died = False  # exited on its own, before stop() signalled it
        self.killed = False  # ignored SIGTERM for STOP_TIMEOUT and got SIGKILL
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Server":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The process id (taskset execs the server, so this is the server's own)."""
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        """Spawn the process, its output going to log_path."""
        try:
            log = self.log_path.open("wb")
        except OSError as e:
            raise ServerError(f"{self.name}: cannot write {self.log_path}: {e.strerror}") from e
        with log:
            self._proc = self.spawn(log)

    def spawn(self, output: IO[bytes] | int) -> subprocess.Popen[bytes]:
        """Popen with stdout and stderr to `output`, in a new session, with its nofile limit."""
        limit_descriptors = None  # runs in the child, before exec
        if self.nofile is not None:
            limit_descriptors = functools.partial(
                resource.setrlimit, resource.RLIMIT_NOFILE, self.nofile
            )
        try:
            return subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                env=None if self.env is None else os.environ | self.env,
                preexec_fn=limit_descriptors,
            )
        except (OSError, subprocess.SubprocessError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise ServerError(f"{self.name}: cannot run {self.argv[0]}: {reason}") from e

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll until the port accepts a connection; fail early if the process exits."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(
                    f"{self.name} exited with code {code} before listening on port "
                    f"{self.port}{self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=_POLL):
                    return
            except OSError:
                time.sleep(_POLL)
        raise ServerError(
            f"{self.name} did not accept on port {self.port} within {timeout:g} s{self._log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to timeout, then SIGKILL the process group; records exit_code."""
        proc = self._proc
        if proc is None or self.exit_code is not None:
            return
        self.died = proc.poll() is not None
        if not self.died:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                os.killpg(proc.pid, signal.SIGKILL)  # still ours: the group is its session
        self.exit_code = proc.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        if not lines:
            return ""
        tail = "\n    ".join(lines[-_LOG_TAIL_LINES:])
        return f"; its output ends:\n    {tail}"
