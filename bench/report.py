"""Present results: the summary table on stdout and ``bench/results/latest.json``."""

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runner import ScenarioResult, TargetResult

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
_MIB = 2**20
_HEADERS = (
    "scenario",
    "xps req/s",
    "nginx req/s",
    "ratio",
    "xps MiB/s",
    "nginx MiB/s",
    "budget",
    "result",
)


def _rps(target: TargetResult | None) -> str:
    if target is None:
        return "-"
    if target.load is None:
        return "error"
    return f"{target.load.requests_per_sec:,.0f}"


def _mibps(target: TargetResult | None) -> str:
    if target is None:
        return "-"
    if target.load is None:
        return "error"
    return f"{target.load.bytes_per_sec / _MIB:,.1f}"


def _row(result: ScenarioResult) -> tuple[str, ...]:
    scenario = result.scenario
    ratio = result.ratio
    return (
        scenario.name,
        _rps(result.xps),
        _rps(result.nginx),
        "-" if ratio is None else f"{ratio:.2f}",
        _mibps(result.xps),
        _mibps(result.nginx),
        f">= {scenario.budget:.2f} x {scenario.metric.value}",
        result.verdict,
    )


def table(results: list[ScenarioResult]) -> str:
    """The summary table, then one line per error or note."""
    rows = [_HEADERS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:-2], widths[1:-2], strict=True)]
        cells += [row[-2].ljust(widths[-2]), row[-1]]
        return "  ".join(cells)

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]
    for result in results:
        needs = result.scenario.requires
        for target in (result.xps, result.nginx):
            if target is None:
                continue
            prefix = f"{result.scenario.name} / {target.name}"
            if target.error:
                hint = ""
                if needs and target is result.xps:
                    hint = f" [scenario needs server features: {', '.join(needs)}]"
                out.append(f"{prefix}: ERROR {target.error}{hint}")
            if target.load is not None and target.load.errors():
                out.append(f"{prefix}: {target.load.errors()}")
            out.extend(f"{prefix}: {note}" for note in target.notes)
    return "\n".join(out)


def _target_json(target: TargetResult | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {
        "error": target.error,
        "notes": target.notes,
        "load": None if target.load is None else asdict(target.load),
    }


def write_json(results: list[ScenarioResult], settings: dict[str, Any]) -> Path:
    """Write every number and message of this run to bench/results/latest.json."""
    document = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "settings": settings,
        "scenarios": [
            {
                "name": r.scenario.name,
                "description": r.scenario.description,
                "path": r.scenario.path,
                "headers": list(r.scenario.headers),
                "requires": list(r.scenario.requires),
                "metric": r.scenario.metric.value,
                "budget": r.scenario.budget,
                "ratio": r.ratio,
                "verdict": r.verdict,
                "xps": _target_json(r.xps),
                "nginx": _target_json(r.nginx),
            }
            for r in results
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    return RESULTS
