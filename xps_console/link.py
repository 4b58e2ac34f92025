"""The console's only way to a server: events in, named commands out.

`Link` is what the app uses; it never learns which of the two it has:

- `EmbeddedLink` runs a `Server` in this process, its loop on a daemon thread (with
  `workers` > 1, a `Master`: its loop on that thread, its worker processes beside it).
  Commands cross over through `CommandAPI.submit` (the loop's queue + wake-up fd); events
  come from a bounded `Subscription` of the core's bus, which the UI drains on a timer.
- `AttachedLink` speaks JSON lines to a headless server's control socket: commands carry an
  `id` that the reply echoes, and event lines are queued (unparsed) until the UI takes them.
  When the server goes away it queues a `link_closed` event and reconnects by itself, with
  backoff (at once when the socket file is created again), then queues `link_restored`.

Both queue at most `EVENT_QUEUE` events; past that the oldest go and `dropped` counts them,
so a flood of traffic costs the console a bounded amount of memory and never slows the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from xps_server.config import config_from, read_config
from xps_server.core.loop import tune_gc
from xps_server.events import Subscription
from xps_server.server.lifecycle import Server
from xps_server.server.master import Master

log = logging.getLogger("xps.console.link")

EVENT_QUEUE = 5_000  # events waiting for the UI; the UI shows a few thousand a second at most
COMMAND_TIMEOUT = 10.0  # seconds a command may take before the link gives up on it
SUBSCRIBE_MAX_RATE = 2000  # events/s an attached console asks the server for
READ_SIZE = 1 << 16
RETRY_FIRST = 0.25  # seconds before the first reconnection attempt; doubled after each failure
RETRY_MAX = 2.0
RETRY_POLL = 0.1  # how often a waiting reconnection looks for a new socket file
MAX_LINE = 1 << 26  # a control-socket line longer than this means the peer is not our server
EVENT_PREFIX = b'{"event": '  # how the control socket starts an event line (json.dumps style)


class LinkError(Exception):
    """The server cannot be reached: not running, gone, or not answering."""


class Link(ABC):
    """What the console needs from a server, embedded or attached."""

    mode: str  # "embedded" or "attached", for the title bar
    target: str  # the config file or the control socket

    @abstractmethod
    async def open(self) -> None:
        """Connect (attached) or make sure the server runs (embedded); raises LinkError."""

    @abstractmethod
    async def command(self, name: str, **args: Any) -> dict:
        """Run a named command; the reply is `{"ok": True, "result": ...}` or `{"ok": False,
        "error": ...}`. Raises LinkError when the server cannot answer at all."""

    @abstractmethod
    def take_events(self, limit: int) -> list[dict]:
        """Up to `limit` queued events, oldest first, as dicts with `kind` and `ts`; no waiting."""

    @property
    @abstractmethod
    def dropped(self) -> int:
        """Events lost on the way (the server's bus and this side's queue together)."""

    @property
    def connected(self) -> bool:
        """Whether commands can reach the server now."""
        return True

    @abstractmethod
    async def close(self) -> None:
        """Embedded: stop the server gracefully. Attached: just detach. Idempotent."""


# --- embedded -------------------------------------------------------------------------------
class EmbeddedLink(Link):
    """A server running in this process, on its own loop thread."""

    mode = "embedded"

    def __init__(self, config_path: str, grace: float = 10.0, queue: int = EVENT_QUEUE) -> None:
        data = read_config(config_path)  # ConfigError: the caller reports it
        self.config = config_from(data, config_path)
        self.target = self.config.path
        # Several workers: the master runs on the loop thread here, the workers beside it.
        self.server: Server | Master = (
            Master(self.config, grace, data)
            if self.config.workers > 1
            else Server(self.config, grace)
        )
        self.subscription: Subscription | None = None
        self._queue = queue
        self._closed = False

    def start(self) -> None:
        """Bind the listeners (and the control socket) and run the loop; raises OSError."""
        core = self.server.start()
        self.subscription = core.bus.subscribe(self._queue, SUBSCRIBE_MAX_RATE)
        tune_gc()
        self.server.run(background=True)

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def connected(self) -> bool:
        return self.running

    async def open(self) -> None:
        if self.server.core is None:
            try:
                self.start()
            except OSError as exc:
                raise LinkError(f"cannot listen: {exc}") from None

    async def command(self, name: str, **args: Any) -> dict:
        api = self.server.api
        if api is None or not self.running:
            raise LinkError("the server is not running")
        future = api.submit({"cmd": name, "args": args})
        try:
            # On timeout the wrapped future is cancelled, so a late command never runs.
            return await asyncio.wait_for(asyncio.wrap_future(future), COMMAND_TIMEOUT)
        except TimeoutError:
            raise LinkError(f"{name}: the server loop did not answer") from None

    def take_events(self, limit: int) -> list[dict]:
        sub = self.subscription
        return [event.to_dict() for event in sub.take(limit)] if sub is not None else []

    @property
    def dropped(self) -> int:
        return self.subscription.dropped if self.subscription is not None else 0

    def shutdown(self) -> None:
        """Graceful stop: in-flight responses get `grace` seconds, then everything is released."""
        if self._closed:
            return
        self._closed = True
        if self.server.stop() and self.subscription is not None:
            self.subscription.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)


# --- attached -------------------------------------------------------------------------------
class AttachedLink(Link):
    """A headless server's control socket (JSON lines), reconnected when the server returns."""

    mode = "attached"

    def __init__(self, socket_path: str, queue: int = EVENT_QUEUE) -> None:
        self.target = socket_path
        # Event lines stay raw bytes until the UI takes them: what the queue drops is never
        # parsed. Replies and console-side notes are dicts.
        self._events: deque[bytes | dict] = deque(maxlen=queue)
        self._pending: dict[int, asyncio.Future[dict]] = {}
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None  # reads the current connection
        self._supervisor: asyncio.Task | None = None  # reconnects when it ends
        self._closing = False
        self._established = False  # subscribed: its end is news (a failed attempt is not)
        self.closed_reason: str | None = "not attached"
        self.reconnects = 0
        self.server_dropped = 0
        self.local_dropped = 0

    async def open(self) -> None:
        await self._connect()
        self.keep_trying()

    def keep_trying(self) -> None:
        """Reconnect whenever the connection ends; if `open` failed, keep trying to attach (a
        console over several servers starts with those it can reach)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="xps-attached-link")

    async def _connect(self) -> None:
        """Connect and subscribe; raises LinkError (leaving nothing open) if either fails."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.target)
        except OSError as exc:
            raise LinkError(f"cannot attach to {self.target}: {exc.strerror or exc}") from None
        self._writer = writer
        self.closed_reason = None
        self._task = asyncio.create_task(self._read(reader), name="xps-attached-reader")
        # The dashboard shows a few hundred events a second at most: no need to make the
        # server serialise more than this for us.
        try:
            reply = await self.command("subscribe", max_rate=SUBSCRIBE_MAX_RATE)
            if not reply.get("ok"):
                raise LinkError(f"{self.target} refused to stream events: {reply.get('error')}")
        except LinkError:
            await self._drop_connection()
            raise
        self._established = True

    async def _supervise(self) -> None:
        """Wait for the connection to end; reconnect, again and again, until closed."""
        while not self._closing:
            task = self._task
            if task is not None:
                await asyncio.wait([task])  # the reader ends with the connection, never raises
            await self._drop_connection()
            if self._closing:
                return
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = RETRY_FIRST
        seen = _socket_identity(self.target)
        while not self._closing:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self._closing:
                await asyncio.sleep(RETRY_POLL)
                now = _socket_identity(self.target)
                if now is not None and now != seen:
                    break  # a server bound the socket again: try now, not after the delay
            seen = _socket_identity(self.target)
            if self._closing:
                return
            try:
                await self._connect()
            except LinkError:
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.reconnects += 1
            self._note("link_restored", f"reattached to {self.target}")
            return

    async def _drop_connection(self) -> None:
        writer, self._writer = self._writer, None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    @property
    def connected(self) -> bool:
        return self.closed_reason is None and self._writer is not None

    async def command(self, name: str, **args: Any) -> dict:
        writer = self._writer
        if writer is None or self.closed_reason is not None:
            raise LinkError(self.closed_reason or "not attached")
        request_id = next(self._ids)
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(json.dumps({"id": request_id, "cmd": name, "args": args}).encode() + b"\n")
            await writer.drain()
            return await asyncio.wait_for(future, COMMAND_TIMEOUT)
        except TimeoutError:
            raise LinkError(f"{name}: {self.target} did not answer") from None
        except OSError as exc:
            raise LinkError(f"{name}: {exc}") from None
        finally:
            self._pending.pop(request_id, None)

    def take_events(self, limit: int) -> list[dict]:
        queue = self._events
        taken: list[dict] = []
        while queue and len(taken) < limit:
            item = queue.popleft()
            if isinstance(item, bytes):
                try:
                    item = json.loads(item)["event"]
                except (ValueError, KeyError, TypeError):
                    continue
            taken.append(item)
        return taken

    @property
    def dropped(self) -> int:
        return self.server_dropped + self.local_dropped

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self._drop_connection()
        self._fail_pending("detached")

    # --- reading ------------------------------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the server closed the control socket"
        buffer = bytearray()
        try:
            while True:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    break
                searched = len(buffer)  # the buffer holds no newline before this
                buffer += chunk
                end = buffer.rfind(b"\n", searched)
                if end < 0:
                    if len(buffer) > MAX_LINE:
                        reason = "the control socket sent an oversized line"
                        break
                    continue
                lines = bytes(buffer[:end]).split(b"\n")
                del buffer[: end + 1]
                for line in lines:
                    self._on_line(line)
        except OSError as exc:
            reason = f"control socket error: {exc}"
        if not self._closing:
            self.closed_reason = reason
            self._fail_pending(reason)
            if self._established:
                self._established = False
                self.server_dropped = 0  # the next server counts its own
                self._note("link_closed", f"{reason}; reconnecting")

    def _on_line(self, line: bytes) -> None:
        if line.startswith(EVENT_PREFIX):
            self._queue(line)
            return
        try:
            message = json.loads(line)
        except ValueError:
            if line.strip():
                self._note("control_reply", f"unreadable line: {line[:200]!r}")
            return
        if not isinstance(message, dict):
            return
        if "event" in message:
            self._queue(message["event"])
        elif "dropped" in message:
            self.server_dropped = int(message["dropped"])
        else:
            future = self._pending.get(message.pop("id", None))
            if future is not None and not future.done():
                future.set_result(message)
            else:  # an answer nobody waits for: show it rather than lose it
                self._note("control_reply", message.get("error") or json.dumps(message))

    def _queue(self, item: bytes | dict) -> None:
        queue = self._events
        if len(queue) == queue.maxlen:
            self.local_dropped += 1
        queue.append(item)

    def _note(self, kind: str, message: str) -> None:
        self._queue({"kind": kind, "ts": time.time(), "message": message})

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkError(reason))
        self._pending.clear()


def _socket_identity(path: str) -> tuple[int, int] | None:
    """What tells a socket file bound again from the old one: its inode and change time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns
