"""The dashboard's panels: a bordered, titled box around a table or the event log.

A panel is what `z` zooms and what a tab shows on a narrow terminal. The sessions panel has
a find box (`f`), the events panel a filter box (`/`), each hidden while empty; the events
panel's subtitle says how the log is narrowed and whether it follows the newest line.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input, Static

from xps_console.formatting import KINDS, upstream_problems, upstream_rows
from xps_console.widgets.event_log import EventLog, FilterInput
from xps_console.widgets.tables import KeyedTable, UpstreamsTable

FILTER_DELAY = 0.15  # typing in the log filter re-filters once the keys pause


class Panel(Vertical):
    """A bordered box with a title; `z` maximizes it."""

    ALLOW_MAXIMIZE = True

    def __init__(self, title: str, *children: Widget, **kwargs) -> None:
        super().__init__(*children, **kwargs)
        self.add_class("panel")
        self.border_title = title

    @property
    def main(self) -> Widget | None:
        """The widget that takes the focus when the panel is shown."""
        for child in self.children:
            if child.focusable and not isinstance(child, Input):
                return child
        return None


class UpstreamsPanel(Panel):
    """The upstreams table, and under it, in words, every upstream that is down and the
    selected one's last error (the table's last columns are often off screen)."""

    now = 0.0  # the wall-clock time of the snapshot shown, for "2s ago"
    _shown = ""  # the problem lines on screen

    def show(self, upstreams: list[dict], now: float) -> None:
        self.now = now
        table = self.query_one(UpstreamsTable)
        table.sync(upstream_rows(upstreams))
        self._problems()

    def on_keyed_table_highlighted(self, event: KeyedTable.Highlighted) -> None:
        event.stop()
        self._problems()

    def _problems(self) -> None:
        table = self.query_one(UpstreamsTable)
        upstreams = [table.data_by_key[key] for key in table.keys]
        lines = upstream_problems(upstreams, table.selected_key(), self.now)
        text = "\n".join(lines)
        if text == self._shown:
            return
        problems = self.query_one("#upstream-problems", Static)
        # A new height relayouts the whole screen: only when the number of lines changes, not
        # when "retried in 9s" becomes "retried in 8s".
        resized = text.count("\n") != self._shown.count("\n") or bool(text) != bool(self._shown)
        self._shown = text
        problems.display = bool(lines)
        problems.update(Text(text), layout=resized)


class FilteredPanel(Panel):
    """A panel with a filter box over its content, shown while in use or not empty."""

    def __init__(self, title: str, *children: Widget, **kwargs) -> None:
        super().__init__(title, *children, **kwargs)
        self.return_to: Widget | None = None

    @property
    def filter_input(self) -> FilterInput:
        return self.query_one(FilterInput)

    def on_mount(self) -> None:
        self.filter_input.display = False

    def start_filter(self, return_to: Widget | None) -> None:
        """Show the filter box and give it the keys; they go back to `return_to` after."""
        self.return_to = return_to if return_to is not None else self.main
        box = self.filter_input
        box.display = True
        box.focus()

    def apply(self, query: str) -> None:
        """Narrow the panel's content (a table or the log: both have `set_filter`)."""
        self.main.set_filter(query)  # type: ignore[union-attr]

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply(event.value)
        self._hand_back()

    @on(FilterInput.Cancelled)
    def _cancelled(self, event: FilterInput.Cancelled) -> None:
        event.stop()
        self.apply("")
        self._hand_back()

    def _hand_back(self) -> None:
        target = self.return_to if self.return_to is not None else self.main
        if target is not None and target.is_attached and target.display:
            target.focus()
        elif self.main is not None:
            self.main.focus()


class SessionsPanel(FilteredPanel):
    """The sessions table and its find box (`f`: words in the client, route, state...)."""

    BINDINGS = [Binding("f", "find", "Find")]

    def action_find(self) -> None:
        self.start_filter(self.main)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        self.apply(event.value)


class EventsPanel(FilteredPanel):
    """The event log and its filter box (`/`); the subtitle says how the log is narrowed."""

    _timer: Timer | None = None

    @property
    def log_view(self) -> EventLog:
        return self.query_one(EventLog)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
        value = event.value
        self._timer = self.set_timer(FILTER_DELAY, lambda: self.apply(value))

    def apply(self, query: str) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        super().apply(query)

    def cycle_kind(self) -> str | None:
        """All lines → requests → errors → ACL → upstreams → operator → all lines."""
        order: list[str | None] = [None, *KINDS]
        kind = order[(order.index(self.log_view.kind) + 1) % len(order)]
        self.log_view.set_kind(kind)
        return kind

    @on(EventLog.Changed)
    def _log_changed(self, event: EventLog.Changed) -> None:
        event.stop()
        log = event.log
        parts = []
        if log.kind is not None:
            parts.append(f"kind: {log.kind}")
        if log.terms:
            parts.append(f"filter: {' '.join(log.terms)}")
        if not log.following:
            parts.append("paused: p or End follows")
        self.border_subtitle = escape(" · ".join(parts))
