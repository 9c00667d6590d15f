"""The live training app in a real browser: click Train, watch points arrive, Stop, bad input."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


def _open(page, url: str):
    page.goto(url)
    page.get_by_role("button", name="Train").wait_for()


def _points(page) -> int:
    """Points in the loss trace, read from plotly's own graph div (Bokeh's shadow DOM pierced)."""
    return page.locator(".js-plotly-plot").evaluate("gd => (gd.data[0].x || []).length")


def _last_step(page) -> float:
    """The step of the loss trace's last point (long curves are thinned, so counts can drop)."""
    return page.locator(".js-plotly-plot").evaluate("gd => (gd.data[0].x || [-1]).slice(-1)[0]")


def _set(page, label: str, value) -> None:
    box = page.get_by_role("textbox", name=label)
    box.fill(str(value))
    box.press("Enter")  # Bokeh's numeric input commits on Enter/blur


def _wait_points(page, at_least: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := _points(page)) < at_least:
        assert time.monotonic() < deadline, f"only {n} points after {timeout} s"
        page.wait_for_timeout(100)
    return n


def test_train_streams_points_then_stop_cancels(page, live_server, screenshot):
    _open(page, f"{live_server}/train_app")
    assert _points(page) == 0
    screenshot("before")
    _set(page, "Steps", 2000)
    _set(page, "Batch size", 1024)  # steps of a few ms: Stop must land mid-run
    page.get_by_role("button", name="Train").click()
    page.get_by_text("training…").wait_for()
    _wait_points(page, 20)
    mid = _last_step(page)
    screenshot("mid")
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("cancelled at step").wait_for(timeout=5_000)
    assert 19 <= mid <= _last_step(page) < 1999  # it went on, then stopped before the end
    assert _points(page) <= 401  # a long curve is thinned to about 400 points
    screenshot("cancelled")


def test_bad_value_shows_the_message(page, live_server, screenshot):
    _open(page, f"{live_server}/train_app")
    _set(page, "Batch size", 100000)
    page.get_by_role("button", name="Train").click()
    page.get_by_text("batch size must be at most 1024").wait_for(timeout=5_000)
    page.get_by_text("not started").wait_for()
    assert _points(page) == 0
    screenshot("error")


def test_autostart_runs_to_finished(page, live_server, screenshot):
    _open(page, f"{live_server}/train_app?autostart=1")
    page.get_by_text("finished: final loss").wait_for(timeout=30_000)
    assert _wait_points(page, 200, timeout=5) == 200  # the plot may redraw after the status
    screenshot("finished")
