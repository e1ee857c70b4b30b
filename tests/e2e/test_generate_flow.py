"""A member's day in a real browser against the live platform: sign up, pick the demo model,
generate and watch it happen, find the result, then stop a long job.

Needs Debian's chromium (/usr/bin/chromium) and a Redis (REDIS_URL); starts daphne, the platform
worker and a GPU worker itself (see conftest.py). No pytest-django database: the processes
share their own SQLite file.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

DEMO_MODEL = "atelier-demo-v1"
SCREENSHOTS = "/tmp/atelier-e2e-{name}.png"

# Records what the live panel shows, since a tiny model can finish between two looks.
WATCH_JOBS = """
() => {
  window.__seen = {statuses: [], previews: [], progress: []};
  const jobs = document.getElementById("jobs");
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const t = m.target;
      if (m.type !== "attributes" || !(t instanceof Element)) continue;
      if (t.classList.contains("job") && m.attributeName === "data-status") {
        window.__seen.statuses.push(t.dataset.status);
      } else if (t.classList.contains("job-preview") && m.attributeName === "src") {
        window.__seen.previews.push(t.getAttribute("src") || "");
      } else if (t.tagName === "PROGRESS") {
        window.__seen.progress.push([Number(t.value), Number(t.max)]);
      }
    }
  }).observe(jobs, {subtree: true, attributes: true,
                    attributeFilter: ["data-status", "src", "value", "max"]});
}
"""


def wait_for_demo_model(page, platform, timeout: float = 120) -> None:
    """The GPU worker announces its models; the page lists them once the platform knows."""
    deadline = time.monotonic() + timeout
    selector = f'#id_checkpoint option[value="{DEMO_MODEL}"]'
    while page.locator(selector).count() == 0:
        platform.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{DEMO_MODEL} never appeared\n{platform.log_tail()}")
        time.sleep(1)
        page.reload()


def open_page(browser, errors: list[str], init_script: str | None = None):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.set_default_timeout(30_000)
    return context, page


def sign_up(page, base: str, username: str) -> None:
    page.goto(base + "/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_email", f"{username}@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(base + "/")
    assert page.locator(".session .username").inner_text() == username


def new_member_generating(browser, platform, username: str, errors: list[str], **options):
    """A member just signed up, on the generator with the demo model picked: (context, page,
    base URL). `options` go to open_page."""
    context, page = open_page(browser, errors, **options)
    base = platform.base_url
    sign_up(page, base, username)
    page.goto(base + "/generate/")
    wait_for_demo_model(page, platform)
    page.select_option("#id_checkpoint", DEMO_MODEL)
    return context, page, base


def test_a_member_generates_watches_progress_and_stops_a_job(live_platform, browser):
    errors: list[str] = []
    context, page = open_page(browser, errors)
    base = live_platform.base_url
    sign_up(page, base, "dora")

    # The generator, with the demo model picked.
    page.click(".mainnav >> text=Generate")
    page.wait_for_url(base + "/generate/")
    wait_for_demo_model(page, live_platform)
    assert (
        "demo: images are noise"
        in page.locator(f'#id_checkpoint option[value="{DEMO_MODEL}"]').inner_text()
    )
    page.select_option("#id_checkpoint", DEMO_MODEL)
    page.fill("#id_prompt", "a lighthouse at dusk, (soft light:1.2)")
    page.fill("#id_width", "256")
    page.fill("#id_height", "256")
    page.fill("#id_steps", "16")
    page.locator("#price").filter(has_text="credits").wait_for()
    page.evaluate(WATCH_JOBS)

    page.click("#generate-button")
    panel = page.locator("#jobs .job").first
    panel.wait_for()
    panel.locator('xpath=self::*[@data-status="succeeded"]').wait_for(timeout=120_000)
    seen = page.evaluate("window.__seen")
    # The panel moved: queued (with its place), running, then done.
    assert seen["statuses"][0] == "queued", seen["statuses"]
    assert "running" in seen["statuses"], seen["statuses"]
    assert seen["statuses"][-1] == "succeeded", seen["statuses"]
    previews = [src for src in seen["previews"] if src.startswith("data:image/")]
    advanced = [value for value, top in seen["progress"] if 0 < value < top]
    assert previews or advanced, f"no live progress was shown: {seen}"

    # The result, with its actions.
    result = page.locator("#results .result[data-image-id]").first
    result.wait_for()
    img = result.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert result.locator(".result-download").get_attribute("download")
    assert result.locator(".result-reuse").is_visible()
    assert result.locator(".result-img2img").is_visible()
    page.screenshot(path=SCREENSHOTS.format(name="generated"), full_page=True)

    # The model choice is remembered for the next visit.
    page.reload()
    assert page.locator("#id_checkpoint").input_value() == DEMO_MODEL
    assert page.locator("#id_prompt").input_value().startswith("a lighthouse at dusk")

    # A long job (the most steps the member's tier allows), stopped while it runs.
    page.fill("#id_steps", page.locator("#id_steps").get_attribute("max"))
    page.fill("#id_width", "512")
    page.fill("#id_height", "512")
    page.click("#generate-button")
    long_job = page.locator('#jobs .job:not([data-status="succeeded"])').first
    long_job.wait_for()
    job_id = long_job.get_attribute("data-job-id")
    long_job = page.locator(f'#jobs .job[data-job-id="{job_id}"]')
    long_job.locator('xpath=self::*[@data-status="running"]').wait_for(timeout=60_000)
    long_job.locator(".job-stop").click()
    long_job.locator('xpath=self::*[@data-status="cancelled"]').wait_for(timeout=60_000)
    assert long_job.locator(".job-stop").is_hidden()
    page.screenshot(path=SCREENSHOTS.format(name="cancelled"), full_page=True)

    # My images lists the result.
    page.click(".mainnav >> text=My images")
    page.wait_for_url(base + "/images/")
    assert page.locator(".result[data-image-id]").count() == 1
    page.screenshot(path=SCREENSHOTS.format(name="my-images"), full_page=True)

    context.close()
    assert not errors, "\n".join(errors)


def test_without_a_websocket_the_page_follows_the_job_by_polling(live_platform, browser):
    errors: list[str] = []
    # A proxy that drops websockets, played by a browser without them.
    context, page, base = new_member_generating(
        browser, live_platform, "eve", errors, init_script="delete window.WebSocket;"
    )
    page.fill("#id_prompt", "a quiet harbour")
    page.fill("#id_width", "128")
    page.fill("#id_height", "128")
    page.fill("#id_steps", "6")
    page.click("#generate-button")
    page.locator('#jobs .job[data-status="succeeded"]').wait_for(timeout=120_000)
    page.locator("#results .result[data-image-id]").first.wait_for()
    assert page.evaluate("document.body.dataset.live") == "polling"
    context.close()
    assert not errors, "\n".join(errors)
