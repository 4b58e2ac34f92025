"""The metrics panel: counters at a glance and a sparkline per rate."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline, Static

from xps_console.formatting import SERIES, MetricsHistory, human_bytes, human_rate
from xps_console.widgets.panels import Panel


class MetricsPanel(Panel):
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
        self.query_one("#metrics-summary", Static).update(Text(summary), layout=False)
        for index, name in enumerate(SERIES):
            self.query_one(f"#spark-{index}", Sparkline).data = list(history.series[name])
            value = history.current[name]
            text = human_bytes(value) if name == "bytes/s" else human_rate(value)
            self.query_one(f"#spark-value-{index}", Label).update(text, layout=False)
