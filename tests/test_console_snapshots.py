"""Screenshots of the console at 80x24 and 160x48, compared with the accepted ones.

The app runs over `CannedLink` (tests/console_fakes.py): the same snapshot, top clients,
session and events on every run, at a fixed time, in UTC, so a difference is a change in what
the console draws. After a deliberate change, look at the report pytest writes, then accept
the new pictures with `pytest tests/test_console_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from textual.pilot import Pilot

from tests.console_fakes import EVENTS, CannedLink, fleet_links
from xps_console.app import ConsoleApp
from xps_console.multi import MultiLink
from xps_console.screens.session_detail import SessionScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The log's clock column reads the same wherever the test runs."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def until(pilot: Pilot, predicate: Callable[[], object]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "the canned data never showed"
        await pilot.pause(0.05)


async def loaded(pilot: Pilot) -> None:
    """Every panel filled: a snapshot and the top clients applied, every event drawn."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    await until(pilot, lambda: app.snapshots and app.last_top)
    await until(pilot, lambda: len(app.event_log.shown) == len(EVENTS))


def console() -> ConsoleApp:
    return ConsoleApp(CannedLink())  # type: ignore[arg-type]


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare, size):
    assert snap_compare(console(), terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, size):
    assert snap_compare(console(), press=["question_mark"], terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES)
def test_block_form(snap_compare, size):
    assert snap_compare(console(), press=["B", *"10.0.0.0/8"], terminal_size=size,
                        run_before=loaded)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_block_confirmation(snap_compare, size):
    assert snap_compare(console(), press=["b"], terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES)
def test_session_detail(snap_compare, size):
    async def opened(pilot: Pilot) -> None:
        await loaded(pilot)
        await pilot.press("enter")
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.detail)

    assert snap_compare(console(), terminal_size=size, run_before=opened)


@pytest.mark.parametrize("size", SIZES)
def test_several_servers_as_one(snap_compare, size):
    """`--attach` three times: an Instance column, every line naming its server, the header
    naming each server and the one that is down."""
    links = fleet_links()
    events = sum(len(link.events) for link in links)

    async def merged(pilot: Pilot) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        await until(pilot, lambda: app.snapshots and app.last_top)
        await until(pilot, lambda: len(app.event_log.shown) == events)

    app = ConsoleApp(MultiLink(links))  # type: ignore[list-item]
    assert snap_compare(app, terminal_size=size, run_before=merged)
