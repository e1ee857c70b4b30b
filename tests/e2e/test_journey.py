"""Issue 15's journey, on a desktop and on a 390x844 phone: sign up, generate a batch, open the
viewer, publish from it, find the image in the gallery, like it, remix it, and see the balance
change on My jobs match the charges.

Needs Debian's chromium and a Redis (see conftest.py); starts the live platform itself.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.test_generate_flow import DEMO_MODEL, sign_up, wait_for_demo_model

pytestmark = pytest.mark.browser

VIEWPORTS: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
SCREENSHOTS = "/tmp/atelier-journey-{viewport}-{name}.png"


def header_balance(page) -> Decimal:
    return Decimal(page.locator("#header-balance").get_attribute("data-balance"))


def go(page, viewport: str, link_text: str) -> None:
    """Follow a header link; on a phone the menu opens first."""
    if viewport == "phone":
        page.click("#menu-toggle")
    page.click(f".mainnav >> text={link_text}")


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_a_member_generates_publishes_likes_remixes_and_sees_the_charges(
    live_platform, browser, viewport
):
    errors: list[str] = []
    context = browser.new_context(**VIEWPORTS[viewport])
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    base = live_platform.base_url

    def shot(name: str) -> None:
        page.screenshot(path=SCREENSHOTS.format(viewport=viewport, name=name), full_page=True)

    sign_up(page, base, f"journey-{viewport}")
    start_balance = header_balance(page)
    assert start_balance > 0

    # A batch of two on the demo model.
    go(page, viewport, "Generate")
    page.wait_for_url(base + "/generate/")
    wait_for_demo_model(page, live_platform)
    page.select_option("#id_checkpoint", DEMO_MODEL)
    page.fill("#id_prompt", f"a lighthouse at dusk, {viewport}")
    page.fill("#id_width", "128")
    page.fill("#id_height", "128")
    page.fill("#id_steps", "6")
    page.fill("#id_batch_size", "2")
    page.locator("#price").filter(has_text="credits").wait_for()
    assert page.locator("#price-warning").is_hidden()
    page.locator("#id_prompt").focus()
    page.keyboard.press("Control+Enter")  # the shortcut submits
    panel = page.locator("#jobs .job").first
    panel.wait_for()
    if viewport == "phone":
        # Below the form on a phone: the sticky bar keeps the job in sight meanwhile.
        page.locator("#status-bar").wait_for(state="visible")
    panel.locator('xpath=self::*[@data-status="succeeded"]').wait_for(timeout=120_000)
    summary = panel.locator(".job-summary")
    summary.wait_for(state="visible")
    assert re.search(r"Charged [\d.]+ credits", summary.inner_text())
    page.wait_for_function(
        "b => document.getElementById('header-balance').dataset.balance !== b",
        arg=str(start_balance),
    )
    assert page.locator("#results .result[data-image-id]").count() == 2
    assert "%]" not in page.title()  # progress left the tab title once done
    shot("generated")

    # The viewer: open the newest, step to the other and back with the keyboard.
    page.locator("#results .result[data-image-id] a.viewer-open").first.click()
    viewer = page.locator("#image-viewer")
    viewer.wait_for(state="visible")
    assert viewer.locator(".viewer-count").inner_text() == "1 / 2"
    page.keyboard.press("ArrowRight")
    assert viewer.locator(".viewer-count").inner_text() == "2 / 2"
    page.keyboard.press("ArrowLeft")
    assert viewer.locator(".viewer-count").inner_text() == "1 / 2"
    shot("viewer")

    # Publish from the viewer, with a title.
    viewer.locator(".viewer-publish a.publish-open").click()
    dialog = page.locator("#publish-dialog")
    dialog.wait_for(state="visible")
    title = f"Dusk ({viewport})"
    dialog.locator("input[name=title]").fill(title)
    dialog.locator("input[name=visibility][value=public]").check()
    dialog.locator("button[value=save]").click()
    dialog.wait_for(state="hidden")
    gallery_link = viewer.locator(".viewer-publish .gallery-link")
    gallery_link.wait_for(state="visible")
    viewer.locator(".viewer-close").click()
    viewer.wait_for(state="hidden")

    # The gallery has it; like it.
    go(page, viewport, "Gallery")
    page.wait_for_url(base + "/gallery/")
    page.locator(".gallery-card .gallery-title", has_text=title).click()
    like = page.locator(".like-button")
    like.click()
    page.locator(".like-button.liked .like-count", has_text="1").wait_for()

    # Remix: the generator comes back with its prompt; run it.
    page.click(".actions a.button.primary")  # Remix
    page.wait_for_url(re.compile(r".*/generate/.*"))
    assert page.locator("#id_prompt").input_value() == f"a lighthouse at dusk, {viewport}"
    page.locator("#price").filter(has_text="credits").wait_for()
    page.click("#generate-button")
    remix = page.locator('#jobs .job[data-status="succeeded"]').first
    remix.wait_for(timeout=120_000)
    remix.locator(".job-summary").wait_for(state="visible")

    # My jobs: two jobs, and their charges are exactly what the balance lost.
    go(page, viewport, "My jobs")
    page.wait_for_url(base + "/jobs/")
    rows = page.locator("tr.job-row")
    assert rows.count() == 2
    charged = sum(Decimal(c) for c in rows.locator("td.amount").all_inner_texts())
    assert charged > 0
    shot("my-jobs")

    # Free credits may arrive at any moment (the tier's periodic grant): the balance and the
    # grants are read from one page, and read again should a grant land between the two reads.
    def balance_and_grants() -> tuple[Decimal, Decimal]:
        page.goto(base + "/accounts/credits/")
        granted = sum(
            (
                Decimal(row.locator("td.amount").inner_text())
                for row in page.locator("table.ledger tbody tr").all()
                if row.locator("td").nth(1).inner_text() == "Grant"
            ),
            Decimal(0),
        )
        return header_balance(page), granted

    end_balance, granted = balance_and_grants()
    if end_balance != granted - charged:
        end_balance, granted = balance_and_grants()
    assert granted >= start_balance
    assert end_balance == granted - charged

    context.close()
    assert not errors, "\n".join(errors)
