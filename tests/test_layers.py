"""The server's layers: a module imports only from its own layer's package or lower ones, and
`http/` (the sans-IO parsers and writer) reaches no socket, event loop or server module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import xps_server

PACKAGE = Path(xps_server.__file__).parent

# Lowest first. A package or top-level module sits on one level and may import its own level's
# names only within itself.
LAYERS = [
    {"core", "http", "config", "policy", "traffic", "toptalkers"},
    {"events", "disk"},
    {"network"},
    {"routes"},
    {"server"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
IO_MODULES = {"socket", "select", "selectors", "ssl", "asyncio", "threading"}
CONSOLE_MODULES = {"xps_console", "textual", "rich"}


def unit_of(path: Path) -> str:
    """The package (or top-level module) a source file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level and TYPE_CHECKING included);
    relative imports stay within their own package, so they are left out. `from xps_server
    import server` counts as importing `xps_server.server`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "xps_server":
                found.update(f"xps_server.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer() -> None:
    assert {unit_of(p) for p in SOURCES} == set(LEVEL)


def test_no_module_imports_a_layer_above_or_beside_its_own() -> None:
    wrong = []
    for path in SOURCES:
        unit = unit_of(path)
        for module in imports_of(path):
            parts = module.split(".")
            if parts[0] != "xps_server" or len(parts) < 2 or parts[1] == unit:
                continue
            if LEVEL[parts[1]] >= LEVEL[unit]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert wrong == []


def test_the_server_never_imports_the_console() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in SOURCES
        for module in imports_of(path)
        if module.split(".")[0] in CONSOLE_MODULES
    ]
    assert wrong == []


def test_http_imports_no_io_or_server_module() -> None:
    for path in (PACKAGE / "http").rglob("*.py"):
        for module in imports_of(path):
            top = module.split(".")[0]
            assert top not in IO_MODULES, f"{path.name} imports {module}"
            if top == "xps_server":
                assert module.split(".")[1] == "http", f"{path.name} imports {module}"


def test_importing_http_loads_no_socket_or_loop() -> None:
    """What the interpreter actually loads, transitive imports included."""
    code = (
        "import sys\n"
        "import xps_server.http.parser, xps_server.http.response_parser, xps_server.http.writer\n"
        "import xps_server.http.target, xps_server.http.mime\n"
        f"print(sorted(m for m in sys.modules if m in {sorted(IO_MODULES)!r}"
        " or m.startswith('xps_server.') and not m.startswith('xps_server.http')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
