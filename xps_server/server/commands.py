"""What an operator command is: its typed arguments, its flags, and the error it raises.

`control.COMMANDS`, the table of every command, is made of these records; the command API
validates a message's arguments from it, and the console reads it for names and help. The
runtime raises the same `CommandError` for input it refuses. Nothing here imports the rest of
the server, so every layer can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xps_server.server.core import Core


class CommandError(ValueError):
    """An operator command that cannot be applied; its message goes back to the operator."""


REQUIRED: Any = object()  # the default of an argument a command cannot do without

NUMBER = (int, float)  # an argument's kind when an integer or a fraction will do


@dataclass(frozen=True, slots=True)
class Arg:
    """One named argument: its JSON type, its default (or REQUIRED), the values or the range
    it may take, and a line of help."""

    name: str
    kind: type[Any] | tuple[type[Any], ...]
    help: str
    default: Any = REQUIRED
    choices: tuple[object, ...] = ()
    bounds: tuple[int, int] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def take(self, args: dict[str, Any]) -> Any:
        """This argument's value in `args` (a JSON null counts as absent); CommandError if it
        is missing, of the wrong type, or outside its choices or bounds."""
        value = args.get(self.name)
        if value is None:
            if self.default is REQUIRED:
                raise CommandError(f"missing argument '{self.name}'")
            return self.default
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        # JSON true/false must not pass for numbers (bool is an int subclass in Python).
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CommandError(f"argument '{self.name}' has the wrong type")
        if self.choices and value not in self.choices:
            raise CommandError(f"{self.name} must be one of {', '.join(map(str, self.choices))}")
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            raise CommandError(f"{self.name} must be in {self.bounds[0]}..{self.bounds[1]}")
        return value


@dataclass(frozen=True, slots=True)
class Command:
    """One named command: what it does (a line of help), its arguments, its handler (called on
    the loop thread with the core and the validated arguments), and two flags: `mutating`, it
    changes the server (announced as an operator_action event); `persisted`, it changes what
    the state file holds (its result says whether that is on disk)."""

    name: str
    help: str
    handler: Callable[[Core, dict[str, Any]], Any]
    args: tuple[Arg, ...] = ()
    mutating: bool = False
    persisted: bool = False

    def parse(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every argument's value, defaults filled in; CommandError for the first bad one.
        Names the command does not take are ignored."""
        return {arg.name: arg.take(args) for arg in self.args}

    def arg(self, name: str) -> Arg:
        """The argument called `name`; KeyError if the command takes none such."""
        for arg in self.args:
            if arg.name == name:
                return arg
        raise KeyError(name)

    @property
    def usage(self) -> str:
        """The command as an operator types it: `block cidr [route] [seconds]`."""
        words = [self.name]
        words += [arg.name if arg.required else f"[{arg.name}]" for arg in self.args]
        return " ".join(words)
