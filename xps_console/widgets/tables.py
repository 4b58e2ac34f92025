"""The console's tables: rows kept in step with keyed data, drawn a line at a time.

`KeyedTable` is a Line API widget (a header line, then one line per row) rather than a
DataTable: it draws each row once, as one piece of text, and keeps it until the row's cells
or the column widths change. A dashboard refreshed every second under load then redraws only
the rows that changed, and a full redraw (zoom, a dialog closing) is mostly cached lines.

`sync` writes the rows it is given, in order, into slots, comparing cells: a session closing
or a new one arriving changes a few lines. Columns are as wide as their widest value so far
(never narrower, so the table does not jump), so no number or unit is ever cut. The cursor
follows its row (by key) while rows around it come and go. When the row under the cursor goes
away (its session was killed, its block lifted), nothing is selected until the operator moves
the cursor: a second press of the same key can never act on the row that slid into its place.
A click on a header sorts by that column (again: the other way, a third time: as the server
sends them).

Each table's own keys are bindings on it (shown in the footer while it has focus); they name
actions of the app, which owns the commands.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from xps_console.formatting import Columns, Row, filter_terms, matches, sort_value

SORT_MARKS = {False: "▲", True: "▼"}  # ascending, descending
PADDING = 1  # cells of space on each side of a column


class KeyedTable(ScrollView, can_focus=True):
    """See the module docstring."""

    COMPONENT_CLASSES = {"keyed-table--header", "keyed-table--cursor"}
    DEFAULT_CSS = """
    KeyedTable {
        background: $surface;
        color: $foreground;
        & > .keyed-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .keyed-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .keyed-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """
    BINDINGS = [
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First", show=False),
        Binding("end,ctrl+end", "last", "Last", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
    ]

    cursor_row: reactive[int] = reactive(0)
    show_cursor: reactive[bool] = reactive(True)

    class SortChanged(Message):
        """The operator clicked a header: the rows are now sorted by `column`."""

        def __init__(self, table: KeyedTable, column: str | None, reverse: bool) -> None:
            super().__init__()
            self.table = table
            self.column = column
            self.reverse = reverse

        @property
        def control(self) -> KeyedTable:
            return self.table

    class Highlighted(Message):
        """The cursor is on another row."""

        def __init__(self, table: KeyedTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> KeyedTable:
            return self.table

    def __init__(self, columns: Columns, **kwargs) -> None:
        super().__init__(**kwargs)
        self._set_columns(columns)
        self.data_by_key: dict[str, dict] = {}  # the rows shown, by key
        self.keys: list[str] = []  # the key of the row in each slot
        self._slots: list[tuple[Text, ...]] = []  # the cells in each slot
        self._lines: list[Strip | None] = []  # each slot drawn, until its cells change
        self._header: Strip | None = None
        self._given: list[Row] = []  # the rows as last given, before filter and sort
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.terms: tuple[str, ...] = ()
        self.lost = False  # the selected row went away; nothing is selected until a move

    def _set_columns(self, columns: Columns) -> None:
        self.labels = dict(columns)
        self.column_keys = tuple(key for key, _ in columns)
        # +1: room for the sort mark, so marking a column never widens it
        self.widths = {key: cell_len(label) + 1 for key, label in columns}

    def set_columns(self, columns: Columns) -> None:
        """Show other columns (the next `sync` gives rows with their cells)."""
        self._set_columns(columns)
        self._slots.clear()
        self._lines.clear()
        self._given = []
        self._header = None
        if self.sort_column not in self.labels:
            self.sort_column = None
        self._show()

    # --- selection ----------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self.keys)

    def selected_key(self) -> str | None:
        if not self.keys or self.lost:
            return None
        return self.keys[min(self.cursor_row, len(self.keys) - 1)]

    def selected(self) -> dict | None:
        """The data of the row under the cursor (None when that row went away)."""
        key = self.selected_key()
        return None if key is None else self.data_by_key.get(key)

    def select(self, key: str) -> None:
        """Put the cursor on `key`'s row."""
        self._regain()
        self.move_cursor(self.keys.index(key))

    def cells(self, key: str) -> tuple[Text, ...]:
        """The cells shown for `key`'s row."""
        return self._slots[self.keys.index(key)]

    def cell(self, key: str, column: str) -> Text:
        return self.cells(key)[self.column_keys.index(column)]

    def move_cursor(self, row: int, scroll: bool = True) -> None:
        self.cursor_row = max(0, min(row, len(self.keys) - 1))
        if scroll:
            self._scroll_to_cursor()

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, max(0, len(self.keys) - 1)))

    def watch_cursor_row(self, old: int, new: int) -> None:
        self._refresh_rows(old, new)
        self.post_message(self.Highlighted(self))

    def watch_show_cursor(self) -> None:
        self._refresh_rows(self.cursor_row)

    def _regain(self) -> None:
        if self.lost:
            self.lost = False
            self.show_cursor = True

    def _step(self, rows: int) -> None:
        self._regain()
        self.move_cursor(self.cursor_row + rows)

    def action_cursor_up(self) -> None:
        self._step(-1)

    def action_cursor_down(self) -> None:
        self._step(+1)

    def action_page_up(self) -> None:
        self._step(-max(1, self.scrollable_content_region.height - 2))

    def action_page_down(self) -> None:
        self._step(max(1, self.scrollable_content_region.height - 2))

    def action_first(self) -> None:
        self._step(-len(self.keys))

    def action_last(self) -> None:
        self._step(len(self.keys))

    def _scroll_to_cursor(self) -> None:
        # Line 0 is the header: row i is line i + 1; keep it below the header.
        height = self.scrollable_content_region.height
        top = self.scroll_y
        row = self.cursor_row
        if row < top:
            self.scroll_to(y=row, animate=False, force=True)
        elif row + 2 > top + height:
            self.scroll_to(y=row + 2 - height, animate=False, force=True)

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self._column_at(offset.x + int(self.scroll_x))
            if column is not None:
                self._header_clicked(column)
            return
        row = int(self.scroll_y) + offset.y - 1
        if row < len(self.keys):
            self._regain()
            self.move_cursor(row)

    def _column_at(self, x: int) -> str | None:
        for key in self.column_keys:
            x -= self.widths[key] + 2 * PADDING
            if x < 0:
                return key
        return None

    # --- rows ---------------------------------------------------------------------------------
    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show `rows` (a key seen twice keeps its first row), filtered by
        `terms` and in the order of the sort column if one was clicked."""
        # Text cells, never str: a string could be taken for markup, and a request line or a
        # path is the client's to choose.
        self._given = [
            (key, tuple(c if isinstance(c, Text) else Text(str(c)) for c in cells), data)
            for key, cells, data in rows
        ]
        self._show()

    def _show(self) -> None:
        unique: dict[str, Row] = {}
        for row in self._given:
            unique.setdefault(row[0], row)
        rows = list(unique.values())
        if self.terms:
            terms = self.terms
            rows = [row for row in rows if matches(self.row_text(row), terms)]
        if self.sort_column is not None:
            column = self.sort_column
            rows.sort(key=lambda row: sort_value(row[2].get(column)), reverse=self.sort_reverse)
        selected = self.selected_key()
        slots, lines = self._slots, self._lines
        del slots[len(rows) :], lines[len(rows) :]
        widths = self.widths
        wider = False
        for index, (_, cells, _) in enumerate(rows):
            if index < len(slots) and slots[index] == cells:
                continue
            for key, cell in zip(self.column_keys, cells, strict=True):
                if cell.cell_len > widths[key]:
                    widths[key] = cell.cell_len  # grows, never shrinks: no jumping table
                    wider = True
            if index < len(slots):
                slots[index] = cells
                lines[index] = None
            else:
                slots.append(cells)
                lines.append(None)
        if wider:
            self._lines = lines = [None] * len(slots)
            self._header = None
        self.keys = [key for key, _, _ in rows]
        self.data_by_key = {key: data for key, _, data in rows}
        width = sum(widths.values()) + 2 * PADDING * len(widths)
        self.virtual_size = Size(width, len(self.keys) + 1)
        self.refresh()
        if selected is None:
            return
        if selected in self.data_by_key:
            index = self.keys.index(selected)
            if index != self.cursor_row:
                self.move_cursor(index, scroll=False)
        else:
            self.lost = True
            self.show_cursor = False

    def row_text(self, row: Row) -> str:
        """What the text filter searches: the cells as shown."""
        return " ".join(cell.plain for cell in row[1])

    def set_filter(self, query: str) -> None:
        terms = filter_terms(query)
        if terms != self.terms:
            self.terms = terms
            self._show()

    @property
    def shown_count(self) -> int:
        return len(self.keys)

    # --- drawing ------------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        base = self.rich_style
        if y == 0:
            strip = self._header_line()
        else:
            index = scroll_y + y - 1
            if index >= len(self._slots):
                return Strip.blank(width, base)
            strip = self._row_line(index)
            if index == self.cursor_row and self.show_cursor:
                # The cursor's colours win over the cells' own, as a DataTable's do.
                cursor = base + self.get_component_rich_style("keyed-table--cursor")
                segments = Segment.apply_style(strip, cursor, post_style=cursor)
                return Strip(segments, strip.cell_length).crop_extend(
                    scroll_x, scroll_x + width, cursor
                )
        return strip.apply_style(base).crop_extend(scroll_x, scroll_x + width, base)

    def _line(self, cells: Sequence[Text]) -> Strip:
        pad = " " * PADDING
        parts: list[Text | str] = []
        for key, cell in zip(self.column_keys, cells, strict=True):
            gap = " " * (self.widths[key] - cell.cell_len)
            right = cell.justify == "right"
            parts += [pad, gap if right else "", cell, "" if right else gap, pad]
        text = Text.assemble(*parts, no_wrap=True, end="")
        segments = list(text.render(self.app.console))
        return Strip(segments, Segment.get_line_length(segments))

    def _row_line(self, index: int) -> Strip:
        line = self._lines[index]
        if line is None:
            line = self._lines[index] = self._line(self._slots[index])
        return line

    def _header_line(self) -> Strip:
        if self._header is None:
            style = self.get_component_rich_style("keyed-table--header")
            labels = []
            for key in self.column_keys:
                mark = SORT_MARKS[self.sort_reverse] if key == self.sort_column else ""
                labels.append(Text(self.labels[key] + mark))
            self._header = self._line(labels).apply_style(style)
        return self._header

    def _refresh_rows(self, *rows: int) -> None:
        top = int(self.scroll_y)
        width = self.size.width
        for row in rows:
            self.refresh(Region(0, row - top + 1, width, 1))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._header = None  # the header's style came from the CSS

    # --- sorting by a header click ------------------------------------------------------------
    def _header_clicked(self, column: str) -> None:
        if column != self.sort_column:
            self.sort_by(column, reverse=False)
        elif not self.sort_reverse:
            self.sort_by(column, reverse=True)
        else:
            self.sort_by(None)  # a third click: back to the server's order
        self.post_message(self.SortChanged(self, self.sort_column, self.sort_reverse))

    def sort_by(self, column: str | None, reverse: bool = False) -> None:
        self.sort_column = column
        self.sort_reverse = reverse
        self._header = None
        self._show()


class SessionsTable(KeyedTable):
    """The live sessions, by session id."""

    BINDINGS = [
        Binding("k", "app.kill_session", "Kill"),
        Binding("enter", "app.session_details", "Details"),
        Binding("s", "app.cycle_sort", "Sort"),
        Binding("u", "app.unblock", "Unblock"),
    ]


class TopTable(KeyedTable):
    """The clients that sent the most in the window (the server's `top` command)."""

    BINDINGS = [
        Binding("s", "app.cycle_top_sort", "Sort"),
        Binding("w", "app.toggle_top_window", "Window"),
        Binding("u", "app.unblock", "Unblock"),
    ]


class RoutesTable(KeyedTable):
    BINDINGS = [Binding("g", "app.toggle_gzip", "gzip")]


class UpstreamsTable(KeyedTable):
    BINDINGS = [Binding("d", "app.toggle_upstream", "Drain/enable")]


class AclTable(KeyedTable):
    BINDINGS = [Binding("u", "app.unblock", "Unblock")]


class WorkersTable(KeyedTable, can_focus=False):
    """The worker processes of a server that runs several (the master's `snapshot`); read
    only, and short: one row per worker, all on screen, so it takes no focus."""
