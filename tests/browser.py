"""A real headless Chromium (Debian's, driven by Playwright) logged into the admin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# No background networking: this machine has no internet, and Chromium would keep trying.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (`make test` installs it)")


@contextmanager
def admin_page(base_url: str, next_path: str, username: str, password: str) -> Iterator[object]:
    """A page logged in as `username`, opened at `next_path`. Sync API: use it from sync tests only."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base_url}/admin/login/?next={next_path}")
            page.fill("#id_username", username)
            page.fill("#id_password", password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base_url}{next_path}")
            yield page
        finally:
            browser.close()
