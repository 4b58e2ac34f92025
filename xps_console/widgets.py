"""The console's panels: keyed tables, the filtered event log, metrics sparklines, help."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Log, Sparkline, Static

from xps_console.formatting import (
    SERIES,
    EventHighlighter,
    MetricsHistory,
    Row,
    filter_terms,
    human_bytes,
    human_rate,
    matches,
)


class KeyedTable(DataTable):
    """A DataTable kept in step with a list of keyed rows.

    `sync` touches only what changed: cells update in place, rows that went away are removed
    and new ones added (removing a row relayouts the table, so nothing is rebuilt for nothing),
    and the cursor stays on the same key while rows around it come and go.
    """

    def __init__(self, columns: Sequence[tuple[str, str]], **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.column_keys = tuple(key for key, _ in columns)
        for key, label in columns:
            self.add_column(label, key=key)
        self.data_by_key: dict[str, dict] = {}
        self._cells: dict[str, tuple] = {}

    def selected_key(self) -> str | None:
        if not self._cells:
            return None
        row = min(max(self.cursor_row, 0), self.row_count - 1)
        return self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    def selected(self) -> dict | None:
        """The data of the row under the cursor."""
        key = self.selected_key()
        return None if key is None else self.data_by_key.get(key)

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show `rows`, in order; a key seen twice keeps its first row."""
        unique: dict[str, Row] = {}
        for row in rows:
            unique.setdefault(row[0], row)
        rows = list(unique.values())
        selected = self.selected_key()
        cursor = self.cursor_row
        wanted = unique.keys()
        for key in [key for key in self._cells if key not in wanted]:
            self.remove_row(key)
            del self._cells[key]
            del self.data_by_key[key]
        columns = self.column_keys
        for key, cells, data in rows:
            self.data_by_key[key] = data
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
            elif old != cells:
                for column, new, was in zip(columns, cells, old, strict=True):
                    if new != was:
                        self.update_cell(key, column, new)
            self._cells[key] = cells
        order = [key for key, _, _ in rows]
        if [row.key.value for row in self.ordered_rows] != order:
            self.reorder(order)
        if selected is not None and selected in self._cells:
            index = self.get_row_index(selected)
            if index != cursor:
                self.move_cursor(row=index, scroll=False)

    def reorder(self, order: list[str]) -> None:
        """Put the rows in `order`; small tables simply rebuild."""
        self.clear()
        for key in order:
            self.add_row(*self._cells[key], key=key)


class SessionsTable(KeyedTable):
    """The live sessions; the first column is the session id, which orders the rows."""

    def reorder(self, order: list[str]) -> None:
        position = {key: index for index, key in enumerate(order)}
        self.sort(self.column_keys[0], key=position.__getitem__)


class FilterInput(Input):
    """The log filter; Enter or Escape hands the keyboard back to the sessions table."""

    BINDINGS = [Binding("escape", "done", "Done", show=False)]

    def action_done(self) -> None:
        self.post_message(self.Submitted(self, self.value))


class EventLog(Log):
    """The scrolling event log: plain lines, coloured only when drawn, bounded.

    It keeps its recent lines so that a new filter can show the matching ones at once.
    """

    def __init__(self, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(highlight=True, max_lines=max_lines, **kwargs)
        self.highlighter = EventHighlighter()
        self.history: deque[str] = deque(maxlen=max_lines)
        self.terms: tuple[str, ...] = ()

    def add(self, lines: Sequence[str]) -> None:
        """Append lines; only those matching the filter are shown."""
        self.history.extend(lines)
        self._show(lines)

    def set_filter(self, query: str) -> None:
        terms = filter_terms(query)
        if terms == self.terms:
            return
        self.terms = terms
        self.clear()
        self._show(self.history)

    def _show(self, lines: Iterable[str]) -> None:
        terms = self.terms
        shown = [line for line in lines if matches(line, terms)] if terms else list(lines)
        if shown:
            self.write_lines(shown)

    @property
    def shown(self) -> list[str]:
        """The lines on display (what the operator sees, filter applied)."""
        return list(self.lines)


class MetricsPanel(Vertical):
    """Counters at a glance and a sparkline per rate."""

    _shown: tuple | None = None  # what is on screen, to skip repainting the same

    def compose(self) -> ComposeResult:
        yield Static(id="metrics-summary")
        for index, name in enumerate(SERIES):
            with Horizontal(classes="spark-row"):
                yield Label(name, classes="spark-name")
                yield Sparkline([], summary_function=max, id=f"spark-{index}")
                yield Label("-", classes="spark-value", id=f"spark-value-{index}")

    def show(self, history: MetricsHistory, summary: str) -> None:
        state = (summary, [tuple(history.series[name]) for name in SERIES])
        if state == self._shown:
            return  # an idle server: nothing to repaint
        self._shown = state
        # Fixed sizes (see app.tcss): updates repaint these widgets, never relayout the screen.
        self.query_one("#metrics-summary", Static).update(summary, layout=False)
        for index, name in enumerate(SERIES):
            self.query_one(f"#spark-{index}", Sparkline).data = list(history.series[name])
            value = history.current[name]
            text = human_bytes(value) if name == "bytes/s" else human_rate(value)
            self.query_one(f"#spark-value-{index}", Label).update(text, layout=False)


HELP = """\
[b]eXpServer console[/b]

Every key runs a named command: the same ones the control socket and scripts use.

[b]b[/b]  block the selected session's IP (its connections drop at once)
[b]u[/b]  unblock: the selected block in the ACL panel, else the selected session's IP
[b]g[/b]  toggle gzip on the selected route
[b]k[/b]  kill the selected session
[b]d[/b]  drain the selected upstream, or enable it again when it is draining
[b]r[/b]  reload the configuration file
[b]s[/b]  sort sessions: oldest first, or busiest (most bytes) first
[b]/[/b]  filter the event log (words that must all appear); Enter or Esc returns
[b]tab[/b]  move between panels (each table keeps its own selection)
[b]?[/b]  this help
[b]q[/b]  quit: embedded, the server stops gracefully; attached, the console just detaches

The sessions table shows at most a few hundred rows (the title says how many of how many);
the event log keeps the latest lines. Events that arrive faster than the console shows them
are dropped, counted in the metrics panel, and never slow the server.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close"),
        Binding("q", "dismiss", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP)
