"""A server's life: start, run, reload, graceful shutdown, close, in one `Server`.

Every way eXpServer runs goes through it: `xps-server` (the loop on the main thread, signals
wired: SIGTERM and SIGINT drain and stop, SIGHUP reloads), the console's embedded server (the
loop on a background thread) and the tests. `reload` and `shutdown` may be called from any
thread or a signal handler: they only post work to the loop thread. `LoopHost`, the base of
`Server`, holds what it shares with the workers' `Master` (`master.py`): running the loop,
the signals, waiting, stopping and closing.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import signal
import threading
from typing import Any

from xps_server.config import Config, ConfigError
from xps_server.routes import HANDLERS
from xps_server.server.control import CommandAPI, ControlServer
from xps_server.server.core import Core

log = logging.getLogger("xps.server")

STOP_WAIT = 5.0  # seconds `close` waits for a background loop it told to stop
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LoopHost(abc.ABC):
    """What `Server` and the workers' `Master` share: a core whose loop runs on the calling
    thread or a background one, the signals it answers, and the end of its life (`wait`,
    `stop`, `close`). A subclass builds the core in `start` and says how it reloads and shuts
    down."""

    THREAD_NAME = "xps-loop"  # of the background loop's thread
    LOOP_NAME = "server"  # in the log lines about the loop
    LOG = log
    STOP_MARGIN = 2.0  # seconds `stop` waits for the loop past the grace

    def __init__(self, grace: float) -> None:
        self.grace = grace  # seconds in-flight responses get at shutdown, unless told otherwise
        self.core: Core | None = None
        self.control: ControlServer | None = None
        self.thread: threading.Thread | None = None
        self._signals: dict[int, Any] = {}  # signal -> the handler it had before ours
        self._closed = False

    def _core(self) -> Core:
        if self.core is None:
            raise RuntimeError("the server is not started")
        return self.core

    @abc.abstractmethod
    def reload(self) -> concurrent.futures.Future[tuple[bool, str]]:
        """Re-read the config file; the future gets (ok, message). Any thread."""

    @abc.abstractmethod
    def shutdown(self, grace: float | None = None) -> None:
        """Stop gracefully within `grace` seconds (default: `self.grace`); returns at once."""

    @abc.abstractmethod
    def _release(self) -> None:
        """(From `close`.) Release what the subclass holds beyond the control socket and the
        core, which are closed after it."""

    # --- signals and run ------------------------------------------------------------------
    def _handle_signals(self) -> None:
        """SIGTERM and SIGINT shut down gracefully and SIGHUP reloads (main thread only)."""
        for signum in SHUTDOWN_SIGNALS:
            self._signals[signum] = signal.signal(signum, self._on_stop_signal)
        self._signals[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, _signum: int, _frame: object) -> None:
        self.shutdown()

    def _on_reload_signal(self, _signum: int, _frame: object) -> None:
        self.reload()

    def run(self, background: bool = False) -> None:
        """Run the loop until the server stops: here, returning once it has stopped, or with
        `background` on a daemon thread (`thread`), returning at once."""
        loop = self._core().loop
        if not background:
            loop.run()
            return
        self.thread = threading.Thread(target=self._run_logged, name=self.THREAD_NAME, daemon=True)
        self.thread.start()

    def _run_logged(self) -> None:
        try:
            self._core().loop.run()
        except Exception:
            self.LOG.exception("the %s loop stopped on an error", self.LOOP_NAME)

    @property
    def running(self) -> bool:
        """Whether the loop runs (on whichever thread)."""
        if self.thread is not None:
            return self.thread.is_alive()
        return self.core is not None and self.core.loop.running

    # --- wait and stop (any thread) -------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for a background loop to stop; whether it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def stop(self, grace: float | None = None) -> bool:
        """Stop a background loop gracefully (shutdown, wait for it, close); `close`'s answer:
        False if the loop would not stop."""
        if self.running:
            seconds = self.grace if grace is None else grace
            self.shutdown(seconds)
            self.wait(seconds + self.STOP_MARGIN)  # the core force-stops at `seconds`
        return self.close()

    def close(self) -> bool:
        """Release every descriptor, once the loop has stopped: a background loop still running
        is stopped at once, without grace (`stop` gives one). Idempotent. Returns False, leaving
        the descriptors open rather than pulling them from under it, if the loop would not stop
        (nothing else is released then either, and a later call tries again)."""
        if self._closed:
            return True
        core = self.core
        thread = self.thread
        if core is not None and thread is not None and thread.is_alive():
            core.loop.call_soon_threadsafe(core.loop.stop)
            thread.join(STOP_WAIT)
            if thread.is_alive():
                self.LOG.error(
                    "the %s loop did not stop; leaving its descriptors open", self.LOOP_NAME
                )
                return False
        self._closed = True
        for signum, previous in self._signals.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._signals.clear()
        self._release()
        if self.control is not None:
            self.control.close()
        if core is not None:
            core.close()
        return True


class Server(LoopHost):
    """One server: a Core built from a Config, its listeners, its control socket (when the
    config names one), its loop on the calling thread or a background one.

    The core, the command API and the control socket exist from `start` on."""

    def __init__(self, config: Config, grace: float = 10.0) -> None:
        super().__init__(grace)
        self._config = config
        self.api: CommandAPI | None = None

    @property
    def config(self) -> Config:
        """The running config: the one given, or the last one a reload applied."""
        return self.core.config if self.core is not None else self._config

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each listener, as bound."""
        return [listener.address for listener in self._core().listeners.values()]

    # --- start ---------------------------------------------------------------------------
    def start(self, signals: bool = False) -> Core:
        """Build the core and bind every listener, and the control socket if the config names
        one; returns the core, or raises OSError (or ConfigError, for a certificate that
        cannot be used) with nothing left bound. With `signals` (main
        thread only), SIGTERM and SIGINT shut down gracefully and SIGHUP reloads."""
        if self.core is not None:
            raise RuntimeError("the server is started already")
        core = Core(self._config, HANDLERS)
        api = CommandAPI(core)
        path = self._config.control_socket
        try:
            core.start()
            self.control = ControlServer(core, api, path) if path else None
        except (OSError, ConfigError):
            core.close()
            raise
        self.core = core
        self.api = api
        if signals:
            self._handle_signals()
        return core

    # --- reload and stop (any thread, or a signal handler) --------------------------------
    def reload(self) -> concurrent.futures.Future[tuple[bool, str]]:
        """Re-read the config file on the loop thread; the future gets (ok, message). A config
        that is invalid or cannot be bound changes nothing: the running one keeps serving."""
        core = self._core()
        future: concurrent.futures.Future[tuple[bool, str]] = concurrent.futures.Future()

        def apply() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(core.reload())
                except Exception as exc:  # a bug: the caller hears of it, the loop goes on
                    future.set_exception(exc)
                    raise

        core.loop.call_soon_threadsafe(apply)
        return future

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight responses finish within `grace` seconds (default: the
        server's), then stop the loop. Returns at once: `wait` (background) or `run`'s return
        (foreground) says when it is done."""
        core = self._core()
        seconds = self.grace if grace is None else grace
        core.loop.call_soon_threadsafe(lambda: core.shutdown(seconds))

    def _release(self) -> None:
        """Nothing: the core holds every descriptor but the control socket's."""
