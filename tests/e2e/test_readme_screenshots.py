"""Refreshes the README's screenshots from the live platform with the demo model:
`make screenshots` (sets ATELIER_SCREENSHOTS_DIR=docs/screenshots). Skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.test_generate_flow import DEMO_MODEL, sign_up, wait_for_demo_model

pytestmark = pytest.mark.browser

OUT = os.environ.get("ATELIER_SCREENSHOTS_DIR", "")
MAKE_STAFF = (
    "from accounts.models import User; User.objects.filter(username='{name}')"
    ".update(is_staff=True, is_superuser=True)"
)


@pytest.mark.skipif(not OUT, reason="set ATELIER_SCREENSHOTS_DIR (make screenshots)")
def test_refresh_the_readme_screenshots(live_platform, browser):
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.set_default_timeout(60_000)
    base = live_platform.base_url
    sign_up(page, base, "ada")

    page.goto(base + "/generate/")
    wait_for_demo_model(page, live_platform)
    page.select_option("#id_checkpoint", DEMO_MODEL)
    for n, prompt in enumerate(("a lighthouse at dusk, (soft light:1.2)", "a misty forest"), 1):
        page.fill("#id_prompt", prompt)
        page.fill("#id_width", "256")
        page.fill("#id_height", "256")
        page.fill("#id_steps", "8")
        page.fill("#id_batch_size", "2")
        page.locator("#price").filter(has_text="credits").wait_for()
        page.click("#generate-button")
        page.wait_for_function("n => document.querySelectorAll('#jobs .job').length === n", arg=n)
        newest = page.locator("#jobs .job").first
        newest.locator('xpath=self::*[@data-status="succeeded"]').wait_for(timeout=180_000)
        newest.locator(".job-summary").wait_for(state="visible")
    page.locator("#results img").first.evaluate("img => img.decode()")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=out / "generator.png")

    page.locator("#results a.viewer-open").first.click()
    page.locator("#image-viewer .viewer-image").evaluate("img => img.decode()")
    page.screenshot(path=out / "viewer.png")
    page.keyboard.press("Escape")

    page.goto(base + "/jobs/")
    page.screenshot(path=out / "my-jobs.png")

    live_platform.manage("shell", "-c", MAKE_STAFF.format(name="ada"))
    page.goto(base + "/ops/")
    page.locator("#credits-chart").scroll_into_view_if_needed()
    page.screenshot(path=out / "ops.png", full_page=True)
    context.close()
