"""Debian's headless chromium driven by selenium, for the tests that read a page in a real browser.

`chromium(what, window)` yields a `webdriver.Chrome` whose console log (`get_log("browser")`) the
tests check, and quits it afterwards. Needs `apt-get install -y chromium chromium-driver`: without
them the test fails (never skips), naming what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@contextmanager
def chromium(what: str, window: str = "1280,900") -> Iterator:
    """A headless chromium for `what` ("the chat page test"), its window `window` ("WIDTH,HEIGHT") pixels."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{what} needs a headless browser, but {', '.join(missing)} is missing: "
                    "run `apt-get install -y chromium chromium-driver` (as root)", pytrace=False)  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()
