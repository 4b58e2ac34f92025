"""The help screen: every key, in words that fit an 80-column terminal."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]eXpServer console[/b]  (Esc, ? or q closes; arrows scroll)

Every key runs a named command: the same the control socket takes.
Keys that block, kill or drain the last upstream ask first:
[b]y[/b] or [b]Enter[/b] does it, [b]n[/b] or [b]Esc[/b] leaves it.

[b]Anywhere[/b]
[b]b[/b]  block the selected client (Top clients or Sessions) globally
[b]B[/b]  block form: address or CIDR, scope, duration; Enter blocks
[b]/[/b]  filter the event log (words that must all appear)
[b]e[/b]  log kind: all, request, error, acl, upstream, operator
[b]p[/b]  pause the log, or follow the newest line again
[b]z[/b]  zoom the focused panel to the whole screen, and back
[b]r[/b]  reload the configuration file
[b]tab[/b]  next panel (a narrow terminal shows one panel at a time)
[b]ctrl+p[/b]  command palette: every command, by name
[b]?[/b]  this help      [b]q[/b]  quit

[b]Sessions[/b]
[b]k[/b] kill   [b]Enter[/b] details   [b]u[/b] unblock its address
[b]f[/b] find (words in client, route, state, request)
[b]s[/b] sort: oldest first, or busiest (most bytes) first

[b]Top clients[/b] (the last 10 s, or 60 s)
[b]s[/b] sort: requests, bytes, errors   [b]w[/b] 10 s or 60 s window
[b]u[/b] unblock its address

[b]Routes[/b]  [b]g[/b] gzip on or off
[b]Upstreams[/b]  [b]d[/b] drain, or enable when draining
[b]ACL[/b]  [b]u[/b] lift the selected block

[b]Event log[/b]  scrolling up pauses it; [b]End[/b] follows again.
[b]Filters[/b]  Enter keeps a filter, Esc cancels it.
[b]Tables[/b]  click a header to sort by it (again: reverse, then off).

After any command the cursor stays where it was. When the row under it
goes (a killed session), nothing is selected until you move the cursor.

Attached to a headless server, the console survives it: when the
server stops it says so, greys the panels, and reconnects by itself
once the control socket is back.
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
