"""The console's tables: rows kept in step with keyed data, sorted by a header click.

The rows of a table are screen slots: `KeyedTable.sync` writes the rows it is given, in order,
into them, updating only the cells that changed (a column grows when a value needs it, so no
number or unit is ever cut). A slot is added or removed only when the number of rows changes:
a session closing or a new one arriving is a few cell updates, never a relayout of the screen.
The cursor follows the row (by its key) while rows around it come and go. When the row under
the cursor goes away (its session was killed, its block lifted), nothing is selected until the
operator moves the cursor: a second press of the same key can never act on the row that slid
into its place.

Each table's own keys are bindings on it (shown in the footer while it has focus); they name
actions of the app, which owns the commands.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.message import Message
from textual.widgets import DataTable

from xps_console.formatting import Columns, Row, filter_terms, matches, sort_value

SORT_MARKS = {False: "▲", True: "▼"}  # ascending, descending
LABEL_ROOM = " "  # a label keeps room for its sort mark, so marking it never resizes it


def cell_width(cell: object) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


def cell_plain(cell: object) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


class KeyedTable(DataTable):
    """A DataTable kept in step with a list of keyed rows; see the module docstring."""

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

    def __init__(self, columns: Columns, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.labels = dict(columns)
        self.column_keys = tuple(key for key, _ in columns)
        for key, label in columns:
            self.add_column(label + LABEL_ROOM, key=key)
        self.data_by_key: dict[str, dict] = {}  # the rows shown, by key
        self.keys: list[str] = []  # the key of the row in each slot
        self._slots: list[tuple] = []  # the cells in each slot
        self._given: list[Row] = []  # the rows as last given, before filter and sort
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.terms: tuple[str, ...] = ()
        self.lost = False  # the selected row went away; nothing is selected until a move

    # --- selection ----------------------------------------------------------------------------
    def selected_key(self) -> str | None:
        if not self.keys or self.lost:
            return None
        return self.keys[min(max(self.cursor_row, 0), len(self.keys) - 1)]

    def selected(self) -> dict | None:
        """The data of the row under the cursor (None when that row went away)."""
        key = self.selected_key()
        return None if key is None else self.data_by_key.get(key)

    def select(self, key: str) -> None:
        """Put the cursor on `key`'s row."""
        self._regain()
        self.move_cursor(row=self.keys.index(key))

    def cells(self, key: str) -> tuple:
        """The cells shown for `key`'s row."""
        return self._slots[self.keys.index(key)]

    def cell(self, key: str, column: str) -> Text:
        return self.cells(key)[self.column_keys.index(column)]

    def _regain(self) -> None:
        if self.lost:
            self.lost = False
            self.show_cursor = True

    def action_cursor_up(self) -> None:
        self._regain()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._regain()
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._regain()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._regain()
        super().action_page_down()

    def action_scroll_top(self) -> None:
        self._regain()
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._regain()
        super().action_scroll_bottom()

    def on_click(self, event: Click) -> None:
        if event.style.meta.get("row", -1) >= 0:
            self._regain()  # then DataTable's own handler moves the cursor to the row clicked

    # --- rows ---------------------------------------------------------------------------------
    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show `rows` (a key seen twice keeps its first row), filtered by
        `terms` and in the order of the sort column if one was clicked."""
        # Text cells, never str: DataTable reads a str as markup, and a request line or a
        # path is the client's to choose ("[/x]" would even raise).
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
        slots = self._slots
        for index in range(len(slots) - 1, len(rows) - 1, -1):
            self.remove_row(str(index))  # from the end: the slots left keep their keys
        del slots[len(rows) :]
        columns = self.columns
        for index, (_, cells, _) in enumerate(rows):
            if index == len(slots):
                self.add_row(*cells, key=str(index))
                slots.append(cells)
                continue
            old = slots[index]
            if old == cells:
                continue
            for column_key, new, was in zip(self.column_keys, cells, old, strict=True):
                if new != was:
                    # Growing only when a value needs it: a shrinking column would make the
                    # whole table jump at every refresh.
                    grow = cell_width(new) > columns[column_key].content_width
                    self.update_cell(str(index), column_key, new, update_width=grow)
            slots[index] = cells
        self.keys = [key for key, _, _ in rows]
        self.data_by_key = {key: data for key, _, data in rows}
        if selected is None:
            return
        if selected in self.data_by_key:
            index = self.keys.index(selected)
            if index != self.cursor_row:
                self.move_cursor(row=index, scroll=False)
        else:
            self.lost = True
            self.show_cursor = False

    def row_text(self, row: Row) -> str:
        """What the text filter searches: the cells as shown."""
        return " ".join(cell_plain(cell) for cell in row[1])

    def set_filter(self, query: str) -> None:
        terms = filter_terms(query)
        if terms != self.terms:
            self.terms = terms
            self._show()

    @property
    def shown_count(self) -> int:
        return len(self.keys)

    # --- sorting by a header click ------------------------------------------------------------
    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = event.column_key.value
        if column != self.sort_column:
            self.sort_by(column, reverse=False)
        elif not self.sort_reverse:
            self.sort_by(column, reverse=True)
        else:
            self.sort_by(None)  # a third click: back to the server's order
        self.post_message(self.SortChanged(self, self.sort_column, self.sort_reverse))

    def sort_by(self, column: str | None, reverse: bool = False) -> None:
        for key in self.column_keys:
            mark = SORT_MARKS[reverse] if key == column else LABEL_ROOM
            self.columns[key].label = Text(self.labels[key] + mark)
        self.sort_column = column
        self.sort_reverse = reverse
        self._show()
        self.refresh()


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
