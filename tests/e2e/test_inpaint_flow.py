"""Inpainting in a real browser: a member uploads a source, paints a mask over it with the
pointer, generates, and gets a result in which every pixel away from the stroke is the source's.

Needs Debian's chromium and a Redis, like test_generate_flow.py (same live platform)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.e2e.test_generate_flow import (
    SCREENSHOTS,
    new_member_generating,
    sign_up,
)

pytestmark = pytest.mark.browser

SIZE = 128


def pattern() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    image.putdata(
        [((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(SIZE) for x in range(SIZE)]
    )
    return image


def test_a_member_paints_a_mask_and_only_the_painted_part_changes(live_platform, browser, tmp_path):
    errors: list[str] = []
    context, page, base = new_member_generating(browser, live_platform, "iris", errors)
    page.fill("#id_prompt", "a red door")
    page.fill("#id_width", str(SIZE))
    page.fill("#id_height", str(SIZE))
    page.fill("#id_steps", "6")

    source = pattern()
    source_path = tmp_path / "source.png"
    source.save(source_path)
    page.locator("#img2img-options > summary").click()
    page.set_input_files("#id_init_image", str(source_path))
    canvas = page.locator("#mask-canvas")
    canvas.wait_for(state="visible")
    page.fill("#id_inpaint_mask_blur_x", "0")
    page.dispatch_event("#id_inpaint_mask_blur_x", "input")

    # One stroke across the top-left quarter, with the mouse (pointer events).
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.25, steps=8)
    page.mouse.up()
    page.screenshot(path=SCREENSHOTS.format(name="mask-painted"), full_page=True)

    page.locator("#price").filter(has_text="credits").wait_for()
    page.click("#generate-button")
    page.locator('#jobs .job[data-status="succeeded"]').first.wait_for(timeout=120_000)
    download = page.locator("#results .result[data-image-id] .result-download").first
    download.wait_for()
    href = download.get_attribute("href") or ""
    response = context.request.get(href if href.startswith("http") else base + href)
    assert response.ok
    made = Image.open(io.BytesIO(response.body())).convert("RGB")
    assert made.size == (SIZE, SIZE)
    a, b = source.load(), made.load()
    assert a is not None and b is not None
    changed = {(x, y) for x in range(SIZE) for y in range(SIZE) if a[x, y] != b[x, y]}
    assert changed, "the painted part was not repainted"
    # The stroke ran through the top-left quarter; the bottom half is untouched.
    assert all(y < SIZE // 2 for _, y in changed), sorted(changed)[-5:]
    assert all(x < SIZE * 0.6 for x, _ in changed)
    page.screenshot(path=SCREENSHOTS.format(name="inpainted"), full_page=True)

    # Remix of the result: the generator lays out its source and its mask again.
    image_id = page.locator("#results .result[data-image-id]").first.get_attribute("data-image-id")
    page.goto(f"{base}/generate/?from_image={image_id}")
    page.locator("#mask-canvas").wait_for(state="visible")
    page.wait_for_function(
        "() => { const p = {mode: 'img2img'}; window.AtelierInpaint.addTo(p); return !!p.mask; }"
    )
    restored = page.evaluate("() => window.AtelierInpaint.addTo({}).inpaint")
    assert restored["mask_blur_x"] == 0

    # "Send to inpaint" on a result opens the editor with that image as the source.
    page.goto(f"{base}/images/")
    page.locator("a", has_text="Send to inpaint").first.click()
    page.locator("#mask-canvas").wait_for(state="visible")
    assert page.evaluate("() => document.getElementById('mask-canvas').width") == SIZE
    context.close()
    assert not errors, "\n".join(errors)


def test_a_finger_paints_the_mask_on_a_touch_screen(live_platform, browser, tmp_path):
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 420, "height": 860}, has_touch=True)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.set_default_timeout(30_000)
    base = live_platform.base_url
    sign_up(page, base, "jade")
    page.goto(base + "/generate/")
    source_path = tmp_path / "source.png"
    pattern().save(source_path)
    page.locator("#img2img-options > summary").tap()
    page.set_input_files("#id_init_image", str(source_path))
    canvas = page.locator("#mask-canvas")
    canvas.wait_for(state="visible")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    assert not page.evaluate("() => 'mask' in window.AtelierInpaint.addTo({})")
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert page.evaluate("() => 'mask' in window.AtelierInpaint.addTo({})")
    context.close()
    assert not errors, "\n".join(errors)
