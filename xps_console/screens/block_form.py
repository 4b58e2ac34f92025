"""The block form (`B`): an address or CIDR, a scope, a duration; Enter blocks.

The address is checked as it is typed, and so is the duration (`never`, `10m`, `1h`...); the
scope is global (refused at connect, open connections closed) or one route (403 there).
Enter submits from any field, unless the scope list is open (Enter then picks a scope); the
app asks for confirmation before anything is blocked. The app keeps one form (installed) and
empties it before each use: building a form of a dozen widgets is slow under load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select, Static

from xps_console.formatting import parse_duration, parse_target

GLOBAL = "*"  # the scope select's value for a global block


@dataclass(frozen=True)
class BlockRequest:
    target: str  # an address or CIDR block, as parse_target writes it
    route: str | None  # None: global
    seconds: float | None  # None: until unblocked


class Parses(Validator):
    """Valid when `parse` accepts the text; its ValueError says what to type instead."""

    def __init__(self, parse: Callable[[str], object]) -> None:
        super().__init__()
        self.parse = parse

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except ValueError as exc:
            return self.failure(str(exc))
        return self.success()


class BlockForm(ModalScreen[BlockRequest | None]):
    """Dismissed with a BlockRequest, or None when cancelled."""

    BINDINGS = [
        Binding("enter", "submit", "Block", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="block-form"):
            yield Static("[b]Block an address or a network[/b]", id="block-title")
            yield Label("Address or CIDR")
            yield Input(
                placeholder="203.0.113.7 or 10.0.0.0/8",
                validators=[Parses(parse_target)],
                validate_on=["changed", "submitted"],
                id="block-address",
            )
            yield Static("", id="block-address-error", classes="field-error")
            yield Label("Scope")
            yield Select(self._scopes(), value=GLOBAL, allow_blank=False, id="block-scope")
            yield Label("Duration")
            yield Input(
                "never",
                placeholder="never, 30s, 10m, 1h, 2d",
                validators=[Parses(parse_duration)],
                validate_on=["changed", "submitted"],
                id="block-duration",
            )
            yield Static("", id="block-duration-error", classes="field-error")
            yield Static(
                "Enter blocks (you confirm first) · Tab next field · Esc cancels", id="block-hint"
            )

    def _scopes(self) -> list[tuple[Text, str]]:
        scopes = [(Text("global: refused at connect, open connections close"), GLOBAL)]
        scopes += [(Text(f"route {route}: its requests get 403"), route) for route in self.routes]
        return scopes

    def prepare(self, routes: Sequence[str]) -> None:
        """Empty the fields and offer the routes of now (before each push)."""
        self.routes = list(routes)
        if self.is_mounted:
            self._reset()

    def _reset(self) -> None:
        self.query_one("#block-address", Input).value = ""
        self.query_one("#block-duration", Input).value = "never"
        scope = self.query_one("#block-scope", Select)
        scope.set_options(self._scopes())
        scope.value = GLOBAL
        for error in self.query(".field-error").results(Static):
            error.update("")

    def on_screen_resume(self) -> None:
        self.query_one("#block-address", Input).focus()  # the cursor in the first field

    @on(Input.Changed)
    def _checked(self, event: Input.Changed) -> None:
        """Say what is wrong as it is typed (nothing while the field is still empty)."""
        result = event.validation_result
        problem = ""
        if event.value.strip() and result is not None and not result.is_valid:
            problem = "; ".join(result.failure_descriptions)
        self.query_one(f"#{event.input.id}-error", Static).update(Text(problem))

    def action_submit(self) -> None:
        scope = self.query_one("#block-scope", Select)
        if scope.expanded:
            raise SkipAction()  # Enter picks the highlighted scope
        address = self.query_one("#block-address", Input)
        duration = self.query_one("#block-duration", Input)
        try:
            target = parse_target(address.value)
        except ValueError as exc:
            self._refuse(address, str(exc))
            return
        try:
            seconds = parse_duration(duration.value)
        except ValueError as exc:
            self._refuse(duration, str(exc))
            return
        route = None if scope.value == GLOBAL else str(scope.value)
        self.dismiss(BlockRequest(target, route, seconds))

    def _refuse(self, field: Input, problem: str) -> None:
        self.query_one(f"#{field.id}-error", Static).update(Text(problem))
        field.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)
