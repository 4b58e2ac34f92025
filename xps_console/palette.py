"""The command palette (ctrl+p): every console command by name, with the same confirmations.

The commands come from the app (`ConsoleApp.palette_commands`): the fixed ones (block form,
reload, filters, panels...) and one per thing on screen (block this top client, unblock this
block, kill this session, drain this upstream...). Each runs what its key runs.
"""

from __future__ import annotations

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content


class ConsoleCommands(Provider):
    def _commands(self):
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
