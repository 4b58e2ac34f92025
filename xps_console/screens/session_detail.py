"""One session in detail (Enter on a session): the server's `session` command, refreshed.

Client, listener, route, the request in progress, the last request's line, status, headers
and user agent, the upstream it went to, bytes and timings, and TLS once the server has it.
When the session closes, the view says so and keeps what it last showed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from xps_console.formatting import session_fields, session_headers

REFRESH = 1.0  # seconds between refreshes while the view is open

Fetch = Callable[[int], Awaitable[dict]]  # a `session` command's reply for an id


def _grid(rows: list[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, Text(value))
    return grid


class SessionScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, session_id: int, fetch: Fetch) -> None:
        super().__init__()
        self.session_id = session_id
        self.fetch = fetch
        self.detail: dict | None = None
        self.problem: str | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="session-detail") as box:
            box.border_title = f"Session #{self.session_id}"
            yield Static("loading…", id="session-fields")
            yield Static("", id="session-headers")

    def on_mount(self) -> None:
        self.load()
        self.set_interval(REFRESH, self.load)

    def load(self) -> None:
        self.run_worker(self._load(), exclusive=True, group="session", exit_on_error=False)

    async def _load(self) -> None:
        reply = await self.fetch(self.session_id)
        if reply.get("ok"):
            self.detail = reply["result"]
            self.problem = None
        else:
            self.problem = str(reply.get("error"))
        self.show()

    def show(self) -> None:
        box = self.query_one("#session-detail")
        box.border_subtitle = "" if self.problem is None else escape(self.problem)
        detail = self.detail
        if detail is None:
            self.query_one("#session-fields", Static).update(Text(self.problem or "loading…"))
            return
        self.query_one("#session-fields", Static).update(_grid(session_fields(detail)))
        headers = session_headers(detail)
        if headers:
            table = _grid(headers)
            table.title = "Last request's headers"
            table.title_justify = "left"
            self.query_one("#session-headers", Static).update(table)
