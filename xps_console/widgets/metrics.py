"""The metrics panel: counters at a glance and a sparkline per rate.

One widget draws it all (a Rich renderable sized to the panel at each draw): a panel of
small widgets would cost every relayout of the screen more than the rest of the dashboard.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from xps_console.formatting import (
    SERIES,
    WORKER_COLUMNS,
    MetricsHistory,
    Row,
    human_bytes,
    human_rate,
    sparkline,
)
from xps_console.widgets.panels import Panel
from xps_console.widgets.tables import WorkersTable

NAME_WIDTH = 8
VALUE_WIDTH = 9


class MetricsView:
    """The summary lines, then one row per rate: its name, its sparkline, its last value."""

    def __init__(self, summary: str, history: MetricsHistory) -> None:
        self.summary = summary
        self.rows = [
            (
                name,
                list(history.series[name]),
                human_bytes(history.current[name])
                if name == "bytes/s"
                else human_rate(history.current[name]),
            )
            for name in SERIES
        ]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.summary)
        yield Text("")
        width = max(1, options.max_width - NAME_WIDTH - VALUE_WIDTH)
        for name, values, value in self.rows:
            yield Text.assemble(
                (f"{name:<{NAME_WIDTH}}", "dim"),
                (sparkline(values, width), "cyan"),
                f"{value:>{VALUE_WIDTH}}",
                no_wrap=True,
            )


class MetricsPanel(Panel):
    """Counters at a glance and a sparkline per rate."""

    _shown: tuple | None = None  # what is on screen, to skip repainting the same
    summary = ""  # the counters' lines on screen

    def compose(self) -> ComposeResult:
        yield Static(id="metrics-view")
        yield WorkersTable(WORKER_COLUMNS, id="workers")

    def show_workers(self, rows: list[Row]) -> None:
        """The workers table under the metrics, for a server of several workers only."""
        table = self.query_one(WorkersTable)
        table.display = bool(rows)
        if rows:
            table.styles.height = len(rows) + 1
            table.sync(rows)

    def show(self, history: MetricsHistory, summary: str) -> None:
        state = (summary, [tuple(history.series[name]) for name in SERIES])
        if state == self._shown:
            return  # an idle server: nothing to repaint
        self._shown = state
        self.summary = summary
        # A fixed height (see app.tcss): an update repaints this panel, never relayouts.
        self.query_one("#metrics-view", Static).update(MetricsView(summary, history), layout=False)
