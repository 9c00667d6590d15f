"""Browser fixtures: Debian's Chromium driven by Playwright (no `playwright install`).

Without Chromium these tests skip, except in CI (CI=true or NORMLAB_REQUIRE_BROWSER=1, which
.ci/run sets), where a missing browser is a failure: a green CI must have clicked the buttons.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps dialing Google's hosts, which this machine refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


def browser_required() -> bool:
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("NORMLAB_REQUIRE_BROWSER") == "1")


def chromium_path() -> str | None:
    """$NORMLAB_CHROMIUM if set, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    wanted = os.environ.get("NORMLAB_CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def _missing(reason: str):
    if browser_required():
        pytest.fail(f"{reason}; CI needs it (apt-get install -y chromium)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    exe = chromium_path()
    if exe is None:
        _missing("Chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[e2e]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 820})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def screenshot(request, page):
    """``screenshot("mid")`` saves screenshots/<test name>-mid.png (git-ignored)."""
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(label: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{label}.png"
        page.screenshot(path=str(path))
        return path

    return take
