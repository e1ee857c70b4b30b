"""ControlNet in a real browser: a member adds a unit, uploads a control image, sees the canny
map a GPU worker computed for the preview, generates, finds the unit in the job's details and
in the image's parameters as sd-webui-controlnet writes them, and gets it back with "Reuse".

Needs Debian's chromium and a Redis, like test_generate_flow.py (same live platform)."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from PIL import Image, ImageDraw

from gpu_worker.preprocessors import run_preprocessor
from gpu_worker.protocol import HEARTBEAT_KEY
from tests.e2e.test_generate_flow import (
    SCREENSHOTS,
    new_member_generating,
)

pytestmark = pytest.mark.browser

SIZE = 64
CONTROLNET = "atelier-demo-controlnet"


def square() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    return image


def wait_for_gpu_worker(platform, timeout: float = 120) -> None:
    """The page lists the demo models before the GPU worker is up (the platform scans the
    folder too); a preview needs the worker itself: wait for its heartbeat."""
    import redis

    client = redis.Redis.from_url(platform.env["REDIS_URL"])
    deadline = time.monotonic() + timeout
    while not list(client.scan_iter(match=HEARTBEAT_KEY.format(worker_id="*"))):
        platform.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no GPU worker heartbeat\n{platform.log_tail()}")
        time.sleep(0.5)


def test_a_member_previews_a_canny_unit_and_generates_with_it(live_platform, browser, tmp_path):
    errors: list[str] = []
    context, page, base = new_member_generating(browser, live_platform, "kira", errors)
    page.fill("#id_prompt", "a white square")
    page.fill("#id_width", str(SIZE))
    page.fill("#id_height", str(SIZE))
    page.fill("#id_steps", "3")

    # Add a unit: the script shows one; the tier allows two, so Add stays until both are shown.
    page.locator("#controlnet-options > summary").click()
    assert page.locator(".cn-unit:visible").count() == 0
    page.click("#cn-add")
    unit = page.locator("#cn-unit-0")
    unit.wait_for(state="visible")
    assert page.locator(".cn-unit:visible").count() == 1 and page.locator("#cn-add").is_visible()
    assert page.locator("#id_cn-0-model").input_value() == CONTROLNET
    # An SDXL ControlNet (as the server renders one) is not offered for the SD1 demo model.
    page.evaluate(
        """() => {
          const select = document.getElementById("id_cn-0-model");
          const option = new Option("xl-canny", "xl-canny");
          option.dataset.family = "sdxl";
          select.add(option);
          select.value = "xl-canny";
          document.getElementById("id_checkpoint").dispatchEvent(new Event("change"));
        }"""
    )
    assert page.locator("#id_cn-0-model").input_value() == CONTROLNET
    assert page.locator('#id_cn-0-model option[value="xl-canny"]').is_disabled()

    source = tmp_path / "square.png"
    square().save(source)
    page.set_input_files("#id_cn-0-image", str(source))
    # a model-free module shows its own slider, at the extension's default, and hides the rest
    page.select_option("#id_cn-0-module", "tile_resample")
    assert page.locator("label[for=id_cn-0-threshold_a]").inner_text() == "Down Sampling Rate"
    assert page.locator("#id_cn-0-threshold_a").input_value() == "1"
    assert not page.locator("#id_cn-0-threshold_b").is_visible()
    assert not page.locator("#id_cn-0-processor_res").is_visible()
    page.select_option("#id_cn-0-module", "canny")
    assert page.locator("#id_cn-0-threshold_a").input_value() == "100"
    page.fill("#id_cn-0-processor_res", str(SIZE))
    wait_for_gpu_worker(live_platform)
    unit.locator(".cn-preview-button").click()
    preview = unit.locator("img.cn-preview")
    page.wait_for_function("() => !document.getElementById('cn-unit-0').hasAttribute('aria-busy')")
    status = unit.locator(".cn-preview-status").inner_text()
    assert preview.is_visible(), status
    src = preview.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
    assert shown.tobytes() == run_preprocessor("canny", square(), SIZE, 100, 200).tobytes()
    page.screenshot(path=SCREENSHOTS.format(name="controlnet-preview"), full_page=True)

    page.locator("#price").filter(has_text="credits").wait_for()
    page.click("#generate-button")
    page.locator('#jobs .job[data-status="succeeded"]').first.wait_for(timeout=120_000)
    link = page.locator("#jobs .job .job-link").first
    link.wait_for(state="visible")
    link.click()
    details = page.locator("dl")
    details.filter(has_text="ControlNet 0").first.wait_for()
    text = page.locator("body").inner_text()
    assert f"Module: canny, Model: {CONTROLNET} [" in text
    assert "Processor Res: 64" in text

    # The image's parameters carry the unit as the extension writes it.
    href = page.locator(".job-images a.viewer-open").first.get_attribute("href") or ""
    page.goto(href if href.startswith("http") else base + href)
    infotext = page.locator("pre.infotext").inner_text()
    assert f'ControlNet 0: "Module: canny, Model: {CONTROLNET} [' in infotext

    # Reuse brings the unit back filled in, with her control image (sent again unless she
    # chooses another).
    # Her control image arrives after the page's first price quote would have gone (held 1 s
    # here): the page waits for it instead of quoting a unit without an image (a 400).
    def held(route: Any) -> None:
        time.sleep(1)
        route.continue_()

    page.route("**/controlnet/0", held)
    page.locator("a.button", has_text="Reuse parameters").click()
    unit = page.locator("#cn-unit-0")
    unit.wait_for(state="visible")
    # The server renders both of her tier's units; the script hides the one not enabled.
    page.locator("#cn-unit-1").wait_for(state="hidden")
    assert page.locator(".cn-unit:visible").count() == 1
    assert page.locator("#id_cn-0-module").input_value() == "canny"
    assert page.locator("#id_cn-0-model").input_value() == CONTROLNET
    assert float(page.locator("#id_cn-0-weight").input_value()) == 1.0
    assert page.locator("#id_cn-0-processor_res").input_value() == str(SIZE)
    page.locator("#cn-unit-0[data-kept-loaded]").wait_for(state="attached")
    kept = unit.locator("img.cn-kept")
    assert kept.is_visible()
    assert (
        page.evaluate("() => document.querySelector('#cn-unit-0 img.cn-kept').naturalWidth") == SIZE
    )
    page.screenshot(path=SCREENSHOTS.format(name="controlnet-reuse"), full_page=True)
    # Generating again sends it: a txt2img unit without an image would be refused.
    page.locator("#price").filter(has_text="credits").wait_for()
    assert page.locator("#jobs .job").count() == 0
    page.click("#generate-button")
    page.locator('#jobs .job[data-status="succeeded"]').first.wait_for(timeout=120_000)
    assert page.locator("#form-errors").is_hidden()

    # The new result's own "Reuse parameters" opens the page again (its units' images are the
    # server's to point at), rather than refilling only the form's other fields in place.
    newest = page.locator("#results .result").first
    newest.wait_for()
    image_id = newest.get_attribute("data-image-id")
    assert image_id and image_id not in page.url
    newest.locator(".result-reuse").click()
    page.wait_for_url(f"**/generate/?from_image={image_id}")
    page.locator("#cn-unit-0[data-kept-loaded]").wait_for(state="attached")
    assert page.locator("#id_cn-0-model").input_value() == CONTROLNET
    context.close()
    assert not errors, "\n".join(errors)
