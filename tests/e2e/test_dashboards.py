"""Every dashboard in a real browser: load, start, points arrive, Stop, a bad value, a screenshot.

Shares the session's in-process server (root conftest ``live_server``, which serves every app).
Widgets are found through Playwright locators, which pierce Bokeh's shadow roots.
"""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


def _points(page, nth: int = 0, trace: int = 0) -> int:
    """Points in one trace of the nth plotly figure on the page (the loss plot is first)."""
    return page.locator(".js-plotly-plot").nth(nth).evaluate(
        f"gd => ((gd.data[{trace}] || {{}}).x || []).length")


def _wait_points(page, at_least: int, nth: int = 0, trace: int = 0, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := _points(page, nth, trace)) < at_least:
        assert time.monotonic() < deadline, f"only {n} points after {timeout} s"
        page.wait_for_timeout(100)
    return n


def _last_step(page, nth: int = 0, trace: int = 0) -> float:
    """The step of a trace's last point (long curves are thinned, so point counts can drop)."""
    return page.locator(".js-plotly-plot").nth(nth).evaluate(
        f"gd => ((gd.data[{trace}] || {{}}).x || [-1]).slice(-1)[0]")


def _ytick_labels(page, nth: int = 0) -> list[tuple[str, float, float]]:
    """``(text, top, bottom)`` of every y tick label drawn on a plot, top to bottom."""
    return page.locator(".js-plotly-plot").nth(nth).evaluate(
        """gd => [...gd.querySelectorAll('.ytick text')].map(t => {
            const r = t.getBoundingClientRect(); return [t.textContent, r.top, r.bottom]; })
            .sort((a, b) => a[1] - b[1])""")


def _set(page, label: str, value) -> None:
    box = page.get_by_role("textbox", name=label, exact=True).first
    box.fill(str(value))
    box.press("Enter")  # Bokeh's inputs commit on Enter/blur


def _train_button(page):
    return page.get_by_role("button", name="Train", exact=True)


def _open(page, url: str) -> None:
    page.goto(url)
    _train_button(page).wait_for()


def _train_then_stop(page, screenshot, done_text: str) -> None:
    _set(page, "Steps", 2000)
    _train_button(page).click()
    _wait_points(page, 10)
    first, deadline = _last_step(page), time.monotonic() + 10
    while _last_step(page) <= first:  # still gaining points: live updates
        assert time.monotonic() < deadline, f"no new point after step {first} in 10 s"
        page.wait_for_timeout(100)
    screenshot("training")
    page.get_by_role("button", name="Stop").click()
    try:
        page.get_by_text(done_text).first.wait_for(timeout=5_000)
    except Exception:
        screenshot("stop-failed")
        raise
    assert _points(page) < 2000


def test_arena_trains_lanes_live_and_stops(page, live_server, screenshot):
    _open(page, f"{live_server}/arena")
    # so that Stop lands mid-run (a training process runs 2000 steps of w256 d4 in about 2 s)
    for label, value in (("Width", 256), ("Depth", 8)):
        _set(page, label, value)
    _train_then_stop(page, screenshot, "done: every lane has ended")
    assert page.get_by_text("cancelled at step").count() == 2  # in the two lanes' cards
    _set(page, "Width", 4096)
    _train_button(page).click()
    page.get_by_text("width must be at most").wait_for(timeout=5_000)
    screenshot("error")


_PLOTS_JS = """() => { const plots = [];
    const walk = root => root.querySelectorAll('*').forEach(e => {
        if (e.shadowRoot) walk(e.shadowRoot);
        if (e.classList.contains('js-plotly-plot')) plots.push(e); });
    walk(document); return plots; }"""


def test_arena_plots_fit_the_window_and_keep_their_width_while_training(page, live_server, screenshot):
    """Two layout regressions: the four lane forms in one row widened the page (and every
    stretching plot) past a 1300 px window's right edge; and each plot's width flipped by 20 px
    about once a second during a run (Panel's resize to the pane's outer box against Plotly's
    own to the inner one), each flip a full redraw."""
    _open(page, f"{live_server}/arena")
    for label, value in (("Steps", 1500), ("Width", 256), ("Depth", 4)):
        _set(page, label, value)
    page.wait_for_timeout(500)
    page.evaluate(f"""() => {{ const plots = ({_PLOTS_JS})(); window.__widths = [];
        window.__sampler = setInterval(() => window.__widths.push(
            plots.map(g => g._fullLayout ? g._fullLayout.width : null).join(',')), 30); }}""")
    _train_button(page).click()
    page.get_by_text("done: every lane has ended").wait_for(timeout=60_000)
    widths = page.evaluate("() => { clearInterval(window.__sampler); return window.__widths; }")
    assert len(widths) > 20 and len(set(widths)) == 1, sorted(set(widths))
    right = page.evaluate(f"""() => ({_PLOTS_JS})().map(g => g.getBoundingClientRect().right)""")
    assert len(right) == 3 and max(right) <= page.viewport_size["width"] - 10, right
    screenshot("after-run")


def test_arena_preset_runs_to_the_end(page, live_server, screenshot):
    _open(page, f"{live_server}/arena")
    page.get_by_role("combobox", name="Preset").select_option(
        "large batch: SGD vs LARS, Adam vs LAMB")
    page.get_by_text("scale each layer's step by a trust ratio").wait_for()
    _set(page, "Steps", 40)
    _train_button(page).click()
    page.get_by_text("done: every lane has ended").wait_for(timeout=60_000)
    for lane in range(4):
        assert _wait_points(page, 40, trace=lane, timeout=5) == 40
        # the dashed test-set line: evaluated every 4 steps, the last after step 40
        assert _wait_points(page, 10, trace=4 + lane, timeout=5) == 10
        assert _last_step(page, trace=4 + lane) == 40
    page.get_by_text("LAMB", exact=True).first.wait_for()
    page.get_by_text("LAMB (test)", exact=True).first.wait_for()
    # the log loss axis spans about a decade: its labels (1, 2, 5 per decade) do not overlap
    # (plotly's own choice labels every digit there, and 7, 8, 9 print over each other)
    labels = _ytick_labels(page)
    assert len(labels) >= 3, labels
    assert all(below[1] >= above[2] for above, below in zip(labels, labels[1:])), labels
    screenshot("finished")


def test_runs_lists_compares_and_rejects_a_bad_filter(page, live_server, screenshot):
    _open(page, f"{live_server}/arena")  # make sure the store holds finished runs
    _set(page, "Steps", 30)
    _train_button(page).click()
    page.get_by_text("done: every lane has ended").wait_for(timeout=30_000)
    page.goto(f"{live_server}/runs")
    page.get_by_role("button", name="Select all shown").click()
    _wait_points(page, 30)
    screenshot("compare")
    box = page.get_by_role("textbox").first
    box.fill("no-such-run")
    box.press("Enter")
    page.get_by_text("no stored run matches").wait_for(timeout=5_000)
    screenshot("error")


@pytest.mark.parametrize(("app", "bad_label", "bad_value", "message"), [
    ("curvature", "Batch size", 5000, "batch size must be at most"),
    ("depth", "Probe every", 100000, "probe every must be between"),
    ("landscape", "Grid", 1000, "grid points per axis"),
])
def test_lab_trains_stops_measures_and_rejects(page, live_server, screenshot, app, bad_label,
                                               bad_value, message):
    _open(page, f"{live_server}/{app}")
    if app == "depth":  # four transformers side by side: keep them shallow here (Mix-LN's first
        _set(page, "Depth", 4)  # block is Post-LN from depth 4)
    else:  # a bigger MLP, so 2000 steps cannot finish before Stop on a fast or idle machine
        _set(page, "Batch size", 1024)
        _set(page, "Width", 256)
    _train_then_stop(page, screenshot, "cancelled at step")
    page.get_by_text("done: ").first.wait_for()
    if app != "depth":  # back to the small defaults for the measured run
        _set(page, "Batch size", 32)
        _set(page, "Width", 32)
    _set(page, "Steps", 40)
    _train_button(page).click()
    page.get_by_text("done: finished").wait_for(timeout=60_000)
    assert _wait_points(page, 40, timeout=5) == 40
    assert _points(page, nth=1) > 0  # the measurement is drawn
    screenshot("finished")
    _set(page, bad_label, bad_value)
    _train_button(page).click()
    page.get_by_text(message).wait_for(timeout=5_000)
    screenshot("error")


def test_landscape_interpolates_between_two_trained_runs(page, live_server, screenshot):
    """Train at batch 32, then at batch 256 with the line to the stored batch-32 run: the stored
    run is listed after the first training, the slice ends at it."""
    _open(page, f"{live_server}/landscape")
    _set(page, "Steps", 30)
    page.get_by_role("button", name="1", exact=True).click()  # a line: slice dimensions 1
    _train_button(page).click()
    page.get_by_text("done: finished").wait_for(timeout=60_000)
    page.get_by_role("combobox", name="Direction", exact=True).select_option("stored run")
    stored = page.get_by_role("combobox", name="Stored run (direction 'stored run')")
    stored.locator("option", has_text="B=32").first.wait_for(state="attached", timeout=5_000)
    option = stored.locator("option").first.inner_text()
    assert "B=32" in option and "mlp/batch w32 d2" in option, option
    _set(page, "Batch size", 256)
    _train_button(page).click()
    run_id = option.split(" ")[0]
    slice_plot = page.locator(".js-plotly-plot").nth(1)
    deadline = time.monotonic() + 60  # the status still says the first run's "done: finished"
    while not (title := slice_plot.evaluate("gd => gd.layout.title.text")).endswith(
            f"to stored run {run_id} (1)"):
        assert time.monotonic() < deadline, title
        page.wait_for_timeout(200)
    assert slice_plot.evaluate("gd => [gd.data[0].x[0], gd.data[0].x.slice(-1)[0]]") == [0, 1]
    screenshot("interpolated")


def _training_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("train-") and t.is_alive()}


def test_closing_the_tab_stops_its_training(browser, live_server):
    """The server stops a closed tab's runs (session destroyed within ~2 s, see server.py)."""
    context = browser.new_context(viewport={"width": 1300, "height": 820})
    context.set_default_timeout(20_000)
    page = context.new_page()
    _open(page, f"{live_server}/arena")
    page.get_by_role("checkbox", name="Train this lane", exact=True).nth(1).uncheck()  # lane 2 off
    for label, value in (("Steps", 2000), ("Width", 256), ("Depth", 8), ("Batch size", 1024)):
        _set(page, label, value)  # a run of a minute or more on this CPU
    before = _training_threads()
    _train_button(page).click()
    _wait_points(page, 3)
    ours = _training_threads() - before
    assert len(ours) == 1
    context.close()  # the tab goes away without pressing Stop
    t0 = time.monotonic()
    while any(t.is_alive() for t in ours):
        assert time.monotonic() - t0 < 15, "the closed tab's training is still running"
        time.sleep(0.1)


def test_two_sessions_never_see_each_others_runs(browser, live_server, page):
    """Each tab gets its own Arena: a run in one is not drawn, listed or stoppable in the other."""
    other = browser.new_context(viewport={"width": 1300, "height": 820})
    other.set_default_timeout(20_000)
    watcher = other.new_page()
    try:
        _open(page, f"{live_server}/arena")
        _open(watcher, f"{live_server}/arena")
        for label, value in (("Steps", 2000), ("Width", 256), ("Depth", 8)):
            _set(page, label, value)
        _train_button(page).click()
        _wait_points(page, 10)
        watcher.wait_for_timeout(1000)  # several refresh periods of the watching session
        assert _points(watcher) == 0
        assert watcher.get_by_text("idle: set up the lanes").count() == 1
        assert watcher.get_by_role("button", name="Stop").is_disabled()
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("done: every lane has ended").wait_for(timeout=5_000)
    finally:
        other.close()


@pytest.mark.parametrize("app", ["arena", "runs", "train_app", "curvature", "depth", "landscape"])
def test_every_checkbox_has_a_label_a_screen_reader_reads(page, live_server, app):
    """Each box is tied to its text by a ``<label>`` (Bokeh's own single Checkbox is not; see
    ``LabeledCheckbox``): it has an accessible name, and clicking the text toggles it."""
    page.goto(f"{live_server}/{app}")
    page.get_by_role("button").first.wait_for()
    boxes = page.get_by_role("checkbox")
    names = [boxes.nth(i).evaluate(
        "el => [...(el.labels || [])].map(l => l.textContent.trim()).join(' ')")
        for i in range(boxes.count())]
    assert all(names), f"checkboxes without a label on /{app}: {names}"
    if app not in ("arena", "runs", "train_app"):  # the labs' boxes are CheckBoxGroup options
        return
    label = "Log-scale y axis" if app == "runs" else "Log-scale loss axis"
    box = page.get_by_role("checkbox", name=label, exact=True)
    assert box.is_checked()
    page.get_by_text(label, exact=True).click()  # the text, not the box
    assert not box.is_checked()
    if app != "runs":  # (the Runs plot is empty until runs are selected)
        page.wait_for_function("gd => gd.layout.yaxis.type === 'linear'",
                               arg=page.locator(".js-plotly-plot").first.element_handle())
