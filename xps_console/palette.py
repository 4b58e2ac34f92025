"""The command palette (ctrl+p): every console command by name, with the same confirmations.

The commands come from the app (`ConsoleApp.palette_commands`): the fixed ones (block form,
reload, filters, panels...), one per command of the server's table (`server_commands`: the
names and help of `xps_server.server.control.COMMANDS`, never a list of our own) and one per
thing on screen (block this top client, unblock this block, kill this session, drain this
upstream...). Each runs what its key runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from xps_server.server.control import COMMANDS

Entry = tuple[str, str, Callable[[], Any]]  # title, help, what picking it does


def server_commands(action: Callable[[str], Callable[[], Any]]) -> list[Entry]:
    """One entry per server command, in the table's order: its usage (`block cidr [route]
    [seconds]`) as the title, its help as the help; `action(name)` says what picking it does."""
    return [(command.usage, command.help, action(name)) for name, command in COMMANDS.items()]


class ConsoleCommands(Provider):
    def _commands(self) -> list[Entry]:
        return self.app.palette_commands()  # type: ignore[attr-defined]

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(Content(title), callback, text=title, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)
