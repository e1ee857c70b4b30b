"""Upscale a result in a real browser against the live platform: the Upscale button on a fresh
result opens the dialog, the job runs on the GPU worker with the demo ESRGAN while the dialog
follows it, and the upscaled image lands in My images at twice the size."""

from __future__ import annotations

import pytest

from tests.e2e.test_generate_flow import new_member_generating

pytestmark = pytest.mark.browser

DEMO_UPSCALER = "atelier-demo-upscaler"


def test_a_member_upscales_a_result_and_finds_it_in_my_images(live_platform, browser):
    errors: list[str] = []
    context, page, base = new_member_generating(browser, live_platform, "ursula", errors)
    page.fill("#id_prompt", "a lighthouse")
    page.fill("#id_width", "64")
    page.fill("#id_height", "64")
    page.fill("#id_steps", "3")
    page.click("#generate-button")
    result = page.locator("#results .result[data-image-id]").first
    result.wait_for(timeout=120_000)

    result.locator(".result-upscale").click()
    dialog = page.locator("#upscale-dialog")
    dialog.wait_for(state="visible")
    dialog.locator("select[name=upscaler_1]").select_option(DEMO_UPSCALER)
    dialog.locator("input[name=scale]").fill("2")
    dialog.locator("button[value=upscale]").click()
    dialog.locator(".upscale-result:not([hidden]) img").wait_for(timeout=120_000)
    assert "128×128" in dialog.locator(".upscale-status").inner_text()
    page.screenshot(path="/tmp/atelier-e2e-upscaled.png", full_page=True)
    dialog.locator("button[value=close]").click()

    page.goto(base + "/images/")
    # the in-page viewer offers Upscale too (the card's own button)
    page.locator(".result[data-image-id] .viewer-open").first.click()
    viewer = page.locator("#image-viewer")
    viewer.wait_for(state="visible")
    assert viewer.locator(".viewer-upscale a.upscale-open").is_visible()
    viewer.locator(".viewer-close").click()
    cards = page.locator(".result[data-image-id] img")
    assert cards.count() == 2
    sizes = {(cards.nth(i).get_attribute("width"), cards.nth(i).get_attribute("height"))
             for i in range(2)}  # fmt: skip
    assert sizes == {("64", "64"), ("128", "128")}
    context.close()
    assert not errors, "\n".join(errors)
