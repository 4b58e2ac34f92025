"""The event log: a bounded list of plain lines, drawn a screenful at a time.

Lines are plain strings, each tagged with the kinds it belongs to (`formatting.KINDS`); they
are coloured only when drawn. The log keeps its last `max_lines` lines: old ones go as new ones
come, and what is on screen stays put. It follows the newest line until the operator scrolls
up or pauses it (`p`); `End` follows again. A filter (words that must all occur, and one kind)
shows the matching lines at once, from every line kept, and follows the newest again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from xps_console.formatting import KIND_BITS, EventHighlighter, filter_terms, matches

MARKER = 1 << 30  # a line every filter shows: where events were dropped
Entry = tuple[int, str]  # (kinds, line)
STRIP_CACHE = 512  # rendered lines kept (a few screens' worth)


class EventLog(ScrollView, can_focus=True):
    """See the module docstring."""

    BINDINGS = [
        Binding("end", "follow", "Follow", show=False),
    ]

    following: reactive[bool] = reactive(True)

    class Changed(Message):
        """Following, paused, or filtered differently: what the panel title says."""

        def __init__(self, log: EventLog) -> None:
            super().__init__()
            self.log = log

        @property
        def control(self) -> EventLog:
            return self.log

    def __init__(self, max_lines: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self.entries: deque[Entry] = deque(maxlen=max_lines)  # every line kept
        self.lines: deque[str] = deque(maxlen=max_lines)  # the lines that pass the filter
        self.terms: tuple[str, ...] = ()
        self.kind: str | None = None
        self.highlighter = EventHighlighter()
        self._width = 0
        self._strips: dict[str, Strip] = {}
        self._adjusting = False  # scroll_y moved by the log itself, not by the operator

    # --- lines in -----------------------------------------------------------------------------
    def add(self, entries: Sequence[Entry]) -> None:
        """Append lines; those that pass the filter are shown."""
        self.entries.extend(entries)
        passing = [line for kinds, line in entries if self._passes(kinds, line)]
        if not passing:
            return
        lines = self.lines
        pruned = max(0, len(lines) + len(passing) - self.max_lines)
        lines.extend(passing)
        self._width = max(self._width, max(len(line) for line in passing))
        self._resize()
        if self.following:
            self._to_end()
        elif pruned:
            # Older lines went: move up with the lines on screen, so they stay put.
            self._move_to(self.scroll_y - pruned)
        self.refresh()

    def _passes(self, kinds: int, line: str) -> bool:
        if kinds & MARKER:
            return True
        if self.kind is not None and not kinds & KIND_BITS[self.kind]:
            return False
        return not self.terms or matches(line, self.terms)

    # --- the filter ---------------------------------------------------------------------------
    def set_filter(self, query: str) -> None:
        """Show only the lines with every word of `query` (and of the kind chosen)."""
        terms = filter_terms(query)
        if terms != self.terms:
            self.terms = terms
            self._refilter()

    def set_kind(self, kind: str | None) -> None:
        """Show only the lines of `kind` (one of formatting.KINDS), or of every kind."""
        if kind != self.kind:
            self.kind = kind
            self._refilter()

    def _refilter(self) -> None:
        self.lines = deque(
            (line for kinds, line in self.entries if self._passes(kinds, line)),
            maxlen=self.max_lines,
        )
        self._width = max((len(line) for line in self.lines), default=0)
        self._resize()
        self.following = True  # a new view starts at the newest line
        self._to_end()
        self.refresh()
        self.post_message(self.Changed(self))

    @property
    def shown(self) -> list[str]:
        """The lines the filter lets through (what the operator can scroll over)."""
        return list(self.lines)

    # --- following ----------------------------------------------------------------------------
    def action_follow(self) -> None:
        self.following = True

    def toggle_pause(self) -> None:
        self.following = not self.following

    def watch_following(self, following: bool) -> None:
        if following:
            self._to_end()
        self.post_message(self.Changed(self))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Scrolled up by the operator (wheel, keys, scrollbar), not by a resize or by us.
        if not self._adjusting and new_value < old_value and new_value < self.max_scroll_y:
            self.following = False

    def _to_end(self) -> None:
        self._move_to(self.max_scroll_y)

    def _move_to(self, y: float) -> None:
        self._adjusting = True
        try:
            # force: the scrollbar that allows scrolling appears only at the next layout
            self.scroll_to(y=max(0.0, y), animate=False, immediate=True, force=True)
        finally:
            self._adjusting = False

    def _resize(self) -> None:
        self.virtual_size = Size(self._width, len(self.lines))

    def on_resize(self) -> None:
        if self.following:
            self.call_after_refresh(self._to_end)

    # --- drawing ------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        style = self.rich_style
        if index >= len(self.lines):
            return Strip.blank(width, style)
        strip = self._strip(self.lines[index])
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    def _strip(self, line: str) -> Strip:
        strip = self._strips.get(line)
        if strip is None:
            text = Text(line, no_wrap=True, end="")
            text.stylize(self.rich_style)
            self.highlighter.highlight(text)
            segments = list(text.render(self.app.console))
            strip = Strip(segments, Segment.get_line_length(segments))
            if len(self._strips) >= STRIP_CACHE:
                self._strips.clear()
            self._strips[line] = strip
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()


class FilterInput(Input):
    """A filter typed as you go: Enter keeps it, Esc cancels it; both hand the keys back."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    class Cancelled(Message):
        def __init__(self, filter_input: FilterInput) -> None:
            super().__init__()
            self.filter_input = filter_input

        @property
        def control(self) -> FilterInput:
            return self.filter_input

    def action_cancel(self) -> None:
        self.value = ""
        self.post_message(self.Cancelled(self))

    def on_blur(self) -> None:
        self.display = bool(self.value)  # an empty filter takes no room
