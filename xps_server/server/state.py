"""The state file: runtime changes (blocks, gzip toggles, drains) that survive a restart.

One JSON object, one key per feature, keys sorted, each item of a list on a line of its own
(readable, and encoded item by item: a writer thread encoding a list of 100,000 blocks never
holds the interpreter lock for the whole list in one call). Writes are atomic: a temporary
file beside the target is written and fsync'ed, renamed over it, and the folder fsync'ed, so
a crash leaves either the old state or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
from typing import Any

STATE_VERSION = 1


def load_state(path: str) -> dict[str, Any]:
    """The saved state; {} if there is none yet. Raises ValueError for a file that cannot be
    read or is not a JSON object (truncated, corrupt, nested too deeply...)."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # bad UTF-8, bad JSON, an integer past Python's digit limit
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def save_state(path: str, data: dict[str, Any]) -> None:
    """Replace the file at `path` with `data` atomically; raises OSError on failure."""
    folder = os.path.dirname(path) or "."
    text = encode_state({"version": STATE_VERSION, **data})
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def encode_state(data: dict[str, Any]) -> str:
    """The text of the state file for `data`."""
    fields = []
    for key, value in sorted(data.items()):
        if isinstance(value, list) and value:
            # Items keep their own key order: sorting them would double the cost.
            items = ",\n".join(f"  {json.dumps(item)}" for item in value)
            text = f"[\n{items}\n ]"
        else:
            text = json.dumps(value, indent=1, sort_keys=True).replace("\n", "\n ")
        fields.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"
