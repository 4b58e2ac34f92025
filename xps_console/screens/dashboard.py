"""The dashboard: every panel at once on a wide terminal, one at a time (tabs) on a narrow one.

Wide (at least `WIDE` columns): sessions, top clients and the event log on the left; metrics,
routes, upstreams and the ACL on the right. Narrow: a tab bar picks the one panel shown, and
Tab / shift+Tab go to the next / previous panel. `z` zooms the focused panel in either. While
the link to the server is down, a banner says so and the panels are greyed.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, Static, Tab, Tabs

from xps_console.formatting import (
    ACL_COLUMNS,
    ROUTE_COLUMNS,
    SESSION_COLUMNS,
    TOP_COLUMNS,
    UPSTREAM_COLUMNS,
)
from xps_console.widgets.event_log import EventLog, FilterInput
from xps_console.widgets.footer import KeyFooter
from xps_console.widgets.metrics import MetricsPanel
from xps_console.widgets.panels import EventsPanel, Panel, SessionsPanel, UpstreamsPanel
from xps_console.widgets.tables import (
    AclTable,
    RoutesTable,
    SessionsTable,
    TopTable,
    UpstreamsTable,
)

WIDE = 120  # columns from which every panel is on screen at once
TALL = 20  # rows under which panels are shown one at a time whatever the width
PANELS = {
    "sessions": "Sessions",
    "top": "Top clients",
    "events": "Events",
    "routes": "Routes",
    "upstreams": "Upstreams",
    "acl": "ACL",
    "metrics": "Metrics",
}
TAB_TITLES = {"top": "Top"}  # shorter names on the tab bar
ZOOMED_OUT = "-zoomed-out"  # the class of what a zoomed panel hides


class DashboardScreen(Screen):
    """See the module docstring."""

    BINDINGS = [
        Binding("tab", "next_panel", "Next panel", show=False),
        Binding("shift+tab", "previous_panel", "Previous panel", show=False),
    ]

    narrow: reactive[bool] = reactive(False)

    class Ready(Message):
        """The panels exist: the app can start filling them."""

    def __init__(self, log_lines: int) -> None:
        super().__init__()
        self.log_lines = log_lines
        self.current = "sessions"  # the panel shown when narrow (the focused one when wide)
        self.client_panel = "sessions"  # of sessions and top clients, the one used last
        self.zoomed: Panel | None = None  # the panel that has the whole screen (`z`)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="banner")
        yield Tabs(
            *(Tab(TAB_TITLES.get(name, title), id=f"tab-{name}") for name, title in PANELS.items()),
            id="panel-tabs",
        )
        with Horizontal(id="main"):
            with Vertical(id="left", classes="column"):
                yield SessionsPanel(
                    "Sessions",
                    FilterInput(
                        placeholder="find: words in client, route, state, request",
                        id="sessions-filter",
                    ),
                    SessionsTable(SESSION_COLUMNS, id="sessions"),
                    id="sessions-panel",
                )
                yield Panel("Top clients", TopTable(TOP_COLUMNS, id="top"), id="top-panel")
                yield EventsPanel(
                    "Events",
                    FilterInput(
                        placeholder="filter the log: words that must all appear", id="log-filter"
                    ),
                    EventLog(max_lines=self.log_lines, id="log"),
                    id="events-panel",
                )
            with Vertical(id="right", classes="column"):
                yield MetricsPanel("Metrics", id="metrics-panel")
                yield Panel("Routes", RoutesTable(ROUTE_COLUMNS, id="routes"), id="routes-panel")
                yield UpstreamsPanel(
                    "Upstreams",
                    UpstreamsTable(UPSTREAM_COLUMNS, id="upstreams"),
                    Static(id="upstream-problems"),
                    id="upstreams-panel",
                )
                yield Panel("ACL", AclTable(ACL_COLUMNS, id="acl"), id="acl-panel")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#banner").display = False
        self._set_narrow(self.app.size.width, self.app.size.height)
        self.show_panel(self.current)
        self.post_message(self.Ready())

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width, event.size.height)

    def _set_narrow(self, width: int, height: int) -> None:
        self.narrow = width < WIDE or height < TALL

    def watch_narrow(self, narrow: bool) -> None:
        self.set_class(narrow, "-narrow")
        self.query_one(KeyFooter).compact = narrow
        self.show_panel(self.current, focus=narrow)

    # --- panels -------------------------------------------------------------------------------
    def panel(self, name: str) -> Panel:
        return self.query_one(f"#{name}-panel", Panel)

    def show_panel(self, name: str, focus: bool = True) -> None:
        """Make `name` the current panel: the one shown when narrow; give it the keys."""
        self.current = name
        if name in ("sessions", "top"):
            self.client_panel = name
        panel = self.panel(name)
        for other in PANELS:
            self.panel(other).set_class(other == name, "-current")
        for column in self.query(".column"):
            column.set_class(panel in column.children, "-current")
        tabs = self.query_one(Tabs)
        if tabs.active != f"tab-{name}":
            tabs.active = f"tab-{name}"
        if focus:
            main = panel.main
            if main is not None:
                main.focus()
            elif self.narrow:
                self.set_focus(None)

    @on(Tabs.TabActivated)
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        name = (event.tab.id or "tab-sessions").removeprefix("tab-")
        if name != self.current:
            self.show_panel(name)

    def cycle_panel(self, step: int) -> None:
        names = list(PANELS)
        self.show_panel(names[(names.index(self.current) + step) % len(names)])

    def action_next_panel(self) -> None:
        if self.narrow:
            self.cycle_panel(+1)
        else:
            self.focus_next()

    def action_previous_panel(self) -> None:
        if self.narrow:
            self.cycle_panel(-1)
        else:
            self.focus_previous()

    def on_descendant_focus(self, event) -> None:
        """The focused panel is the current one (the one a narrow layout shows)."""
        widget: Widget | None = event.widget
        while widget is not None and not isinstance(widget, Panel):
            widget = widget.parent if isinstance(widget.parent, Widget) else None
        if widget is not None and widget.id:
            name = widget.id.removesuffix("-panel")
            if name != self.current:
                self.show_panel(name, focus=False)

    def toggle_zoom(self) -> None:
        """Give the current panel the whole screen, or share it again.

        Not Textual's maximize: that restyles every widget of the screen (a class on the
        screen), this hides the widgets around the panel (a class on each), a fraction of it.
        """
        if self.zoomed is not None:
            for widget in self.query(f".{ZOOMED_OUT}"):
                widget.remove_class(ZOOMED_OUT)
            self.zoomed = None
            return
        panel = self.panel(self.current)
        for column in self.query(".column"):
            if panel in column.children:
                for other in column.children:
                    if other is not panel:
                        other.add_class(ZOOMED_OUT)
            else:
                column.add_class(ZOOMED_OUT)
        self.query_one(Tabs).add_class(ZOOMED_OUT)
        self.zoomed = panel

    # --- the link -----------------------------------------------------------------------------
    def set_stale(self, message: str | None) -> None:
        """`message`: the link is down (the banner says this); None: it is up again."""
        banner = self.query_one("#banner", Static)
        self.set_class(message is not None, "-stale")
        banner.display = message is not None
        if message is not None:
            banner.update(Text(message))
