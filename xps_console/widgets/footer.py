"""The footer: the keys that fit, and never without Block, Help and Quit.

Textual's footer lays every shown binding out in a row and lets the narrow terminal cut the
end off (Help and Quit first, then the command-palette key drawn over the rest). This one keeps
the essential keys and the palette key, then as many of the others (the focused panel's own
keys come first) as the width leaves room for, in their usual order.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

ESSENTIAL = frozenset(("block_client", "help", "quit"))
PALETTE_WIDTH = 14  # "^p palette" with its border and padding, docked on the right


def key_width(key: FooterKey, compact: bool) -> int:
    """Cells a key takes: its key and description, their padding, its margin."""
    return len(key.key_display) + len(key.description) + (2 if compact else 3)


class KeyFooter(Footer):
    """See the module docstring."""

    _laid_out_for = 0  # the width the keys were chosen for
    _showing: tuple = ()  # the bindings the keys were made for

    def bindings_changed(self, screen: Screen) -> None:
        """Recompose only when the keys to show changed: a recompose mounts a row of widgets
        and relayouts the screen (after every dialog, every change of focus)."""
        showing = tuple(
            (key, active.binding.action, active.binding.description, active.enabled)
            for key, active in screen.active_bindings.items()
            if active.binding.show
        )
        if showing != self._showing or not self.children:
            self._showing = showing
            super().bindings_changed(screen)

    def compose(self) -> ComposeResult:
        widgets = list(super().compose())
        width = self.app.size.width
        self._laid_out_for = width
        keys = [
            w for w in widgets if isinstance(w, FooterKey) and "-command-palette" not in w.classes
        ]
        budget = width - PALETTE_WIDTH - 1
        kept = {id(key) for key in keys if key.action in ESSENTIAL}
        budget -= sum(key_width(key, self.compact) for key in keys if id(key) in kept)
        for key in keys:
            if id(key) in kept:
                continue
            needed = key_width(key, self.compact)
            if needed <= budget:
                kept.add(id(key))
                budget -= needed
        for widget in widgets:
            if widget in keys and id(widget) not in kept:
                continue
            yield widget

    def on_resize(self) -> None:
        if self.app.size.width != self._laid_out_for:
            self.call_after_refresh(self.recompose)
