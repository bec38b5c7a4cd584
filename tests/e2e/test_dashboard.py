"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver), against the real API and
worker training the tiny model: the live curve, the finished job's results, cancel from the page, a bad field's
error next to it, the dataset report, and the token asked before any call succeeds.

One browser and one API + worker serve the whole module, to keep it fast. FORGE_SCREENSHOTS=docs writes the
README's screenshots (docs/dashboard-jobs.png, docs/dashboard-job.png) from the finished job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from app.demo_data import write_splits
from tests.conftest import ROOT, tiny_config
from tests.e2e.conftest import Processes, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)

TOKEN = "dashboard-test-token"


@pytest.fixture(scope="module")
def dash_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard") / "project"
    write_splits(root / "data", sizes=(48, 8, 8))
    return root


class Service(NamedTuple):
    procs: Processes
    base: str
    warm_up: str  # the id of a one-step job submitted first


@pytest.fixture(scope="module")
def service(
    dash_project: Path, models_root: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("dashboard-logs")
    procs = Processes(dash_project, models_root, logs)
    try:
        base = procs.api()
        procs.worker()
        # The worker's first job pays for starting its training process (imports, ~20 s on a busy machine); a
        # one-step job takes that while the tests that need no training run, and the later jobs start warm.
        warm_up = tiny_config(tiny_model_dir, max_steps=1, logging_steps=1)
        warm_up["evaluation"] = {"baseline": False, "evaluate": False}
        created = httpx.post(f"{base}/api/training", json=warm_up, timeout=60)
        assert created.status_code == 201, created.text
        yield Service(procs, base, created.json()["id"])
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return client.get(f"/api/training/jobs/{job_id}").json()


def _text(browser: Any, css: str) -> str:

    # One script, so an element the page renders again meanwhile cannot go stale between finding and reading it.
    text = browser.execute_script(f"const e = document.querySelector({css!r}); return e ? e.innerText : ''")
    return str(text).strip()


def _points(browser: Any) -> int:
    return int(browser.execute_script("return Number(document.getElementById('curve').dataset.points || 0)"))


def _screenshot(browser: Any, name: str) -> None:
    """The whole page at 1280 px wide, into FORGE_SCREENSHOTS (e.g. docs) when set."""
    folder = os.environ.get("FORGE_SCREENSHOTS")
    if not folder:
        return
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(1280, min(max(height + 140, 800), 4000))
    time.sleep(0.5)  # the chart follows its box's new size
    target = (ROOT / folder if not Path(folder).is_absolute() else Path(folder)) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(target))
    browser.set_window_size(1280, 1000)


def test_a_bad_field_is_shown_next_to_it(service: Service, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    base = service.base
    browser.get(f"{base}/submit")
    area = browser.find_element(By.ID, "config-text")
    standard = area.get_attribute("value")
    assert "learning_rate: 0.0002" in standard and "lora_alpha: 16" in standard  # the spec's standard config
    bad = standard.replace("learning_rate: 0.0002", "learning_rate: -1").replace("r: 8", "r: many")
    browser.execute_script("arguments[0].value = arguments[1]", area, bad)
    browser.find_element(By.ID, "submit-button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "li.field-error"), 30, "the errors")
    for param, key in (("training.learning_rate", "learning_rate: -1"), ("lora.r", "r: many")):
        error = browser.find_element(By.CSS_SELECTOR, f"li.field-error[data-param='{param}']")
        line = error.find_element(By.XPATH, "preceding-sibling::li[contains(@class, 'config-line')][1]")
        assert key in line.find_element(By.TAG_NAME, "code").text, (param, line.text)
        assert error.get_attribute("data-line") == line.get_attribute("data-line")
    assert "lora.r" in _text(browser, "#submit-summary")

    browser.find_element(By.ID, "reset-button").click()
    assert area.get_attribute("value") == standard
    assert not browser.find_element(By.ID, "config-annotated").is_displayed()


def test_dataset_upload_shows_the_bad_lines(service: Service, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base = service.base
    good = '{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'
    bad = '{"conversations": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}'
    upload = tmp_path / "lessons.jsonl"
    upload.write_text(f"{good}\n{bad}\nnot json\n")
    browser.get(f"{base}/datasets")
    browser.find_element(By.ID, "dataset-file").send_keys(str(upload))
    browser.find_element(By.ID, "dataset-button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#dataset-report tr[data-line]"), 60, "the report")
    lines = [r.get_attribute("data-line") for r in browser.find_elements(By.CSS_SELECTOR, "#dataset-report tr")[1:]]
    assert lines == ["2", "3"], lines
    assert "bot" in _text(browser, "#dataset-report")


def test_with_a_token_no_call_succeeds_before_it_is_entered(service: Service, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    base = service.procs.api(FORGE_API_TOKEN=TOKEN)  # a second API on the same project: another origin, a fresh tab
    calls = "return performance.getEntriesByType('resource').filter(e => /\\/(api|ui)\\//.test(e.name))"

    browser.get(f"{base}/")
    form = browser.find_element(By.ID, "token-form")
    wait_for(form.is_displayed, 10, "the token form")
    time.sleep(1.5)  # what a page would have fetched by now
    assert browser.execute_script(calls) == [], "no call before the token"
    assert "Loading jobs" in _text(browser, "#jobs")

    browser.find_element(By.ID, "token-input").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(lambda: "refused" in _text(browser, "#token-error"), 10, "the refusal")
    statuses = browser.execute_script(calls + ".map(e => e.responseStatus)")
    assert all(s == 401 for s in statuses), statuses  # the refused check, if Chromium lists it
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-job-id]") == []

    field = browser.find_element(By.ID, "token-input")
    field.clear()
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-job-id]"), 30, "the job list with the token")
    assert not form.is_displayed()

    # Asked once: another page of the same tab uses the kept token; the status, the curve (stream or polled)
    # and the fragments send it too. The worker is busy with the warm-up job until it ends, so no time is lost.
    client = httpx.Client(base_url=service.base, timeout=60)
    wait_for(lambda: _job(client, service.warm_up)["status"] == "succeeded", 180, "the warm-up job")
    browser.get(f"{base}/jobs/{service.warm_up}")
    wait_for(lambda: _text(browser, "#job-status") == "succeeded", 30, "the job page with the kept token")
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    wait_for(lambda: _points(browser) > 0, 30, "the curve with the token")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gates li[data-gate]"), 30, "the gates")
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not any(TOKEN in u for u in [*urls, browser.current_url]), "the token is never in a URL"


def test_live_curve_then_results_of_the_finished_job(service: Service, browser: Any, tiny_model_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    base = service.base
    client = httpx.Client(base_url=base, timeout=60)
    # Enough steps to watch the curve grow on a busy 2-core machine (a step takes 0.1-5 s there), few enough to end.
    config = tiny_config(tiny_model_dir, max_steps=8, logging_steps=1, eval_steps=4)
    job_id = client.post("/api/training", json=config).json()["id"]

    browser.get(f"{base}/jobs/{job_id}")
    wait_for(lambda: _text(browser, "#job-phase") not in ("", "\u2013"), 30, "the page to show the job")
    wait_for(lambda: _points(browser) >= 1, 180, "the curve's first point")
    # Fed by the event stream where the server has one (issue 13), else by the job's polled status.
    streamed = "/api/training/jobs/{job_id}/events/stream" in client.get("/openapi.json").json()["paths"]
    assert ("live from the event stream" if streamed else "polled") in _text(browser, "#curve-source")
    box = browser.find_element(By.ID, "curve").rect
    below = browser.find_element(By.ID, "actions-heading").rect
    first = _points(browser)
    wait_for(lambda: _points(browser) > first, 60, "the curve to gain points while the test watches")
    # The chart box is fixed: new points move nothing on the page.
    assert browser.find_element(By.ID, "curve").rect == box
    assert browser.find_element(By.ID, "actions-heading").rect == below
    assert _text(browser, "#job-status") in ("running", "cancelling", "succeeded")

    wait_for(lambda: _text(browser, "#job-status") == "succeeded", 300, "the job to finish on the page")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#metrics tr[data-metric]"), 30, "the metrics table")
    # Read in one script: the page may render the tables again as the last events arrive (elements go stale).
    metrics = dict(
        browser.execute_script(
            "return [...document.querySelectorAll('#metrics tr')].map(r => [r.dataset.metric, r.innerText])"
        )
    )
    assert {"token_f1", "exact_match", "test_loss"} <= set(metrics)

    def gates() -> list[list[str]]:  # the gates arrive with the job's last events, maybe after the metrics
        return browser.execute_script(  # type: ignore[no-any-return]
            "return [...document.querySelectorAll('#gates li[data-gate]')]"
            ".map(g => [g.dataset.gate, (g.querySelector('.reason') || {}).innerText || ''])"
        )

    wanted = {"baseline-established", "model-performance", "loss-converged"}
    wait_for(lambda: wanted <= {name for name, _ in gates()}, 30, "the gates list")
    assert all(reason for _, reason in gates()), "every gate says why"
    links = browser.execute_script("return [...document.querySelectorAll('#artifacts a.download')].map(a => a.href)")
    assert any(h.endswith("/artifacts/metrics/gates.json") for h in links), links
    assert httpx.get(links[0], timeout=30).status_code == 200
    wait_for(lambda: "training" in _text(browser, "#log"), 30, "the log tail")
    wait_for(lambda: _points(browser) >= 8, 30, "every logged step on the finished curve")
    source = "the event stream" if streamed else "metrics/training-stats.json"
    wait_for(lambda: _text(browser, "#curve-source") == f"complete (from {source})", 30, "the curve's source")
    assert browser.find_element(By.ID, "export-button").is_enabled()
    _screenshot(browser, "dashboard-job.png")

    # Phone width: nothing wider than the screen but the tables, which scroll inside their box.
    browser.set_window_size(390, 900)
    browser.get(f"{base}/jobs/{job_id}")
    wait_for(lambda: _text(browser, "#job-status") == "succeeded", 30, "the job page at phone width")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.set_window_size(1280, 1000)


def test_cancel_from_the_page_cancels_a_running_job(service: Service, browser: Any, tiny_model_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    base = service.base
    client = httpx.Client(base_url=base, timeout=60)
    job_id = client.post("/api/training", json=tiny_config(tiny_model_dir, max_steps=5000)).json()["id"]
    browser.get(f"{base}/jobs/{job_id}")
    wait_for(lambda: _job(client, job_id)["step"] >= 2, 180, "the job to train")
    button = browser.find_element(By.ID, "cancel-button")
    wait_for(button.is_enabled, 10, "the cancel button")
    button.click()
    wait_for(lambda: _job(client, job_id)["status"] == "cancelled", 60, "the job to be cancelled")
    wait_for(lambda: _text(browser, "#job-status") == "cancelled", 30, "the page to show it")
    assert "Cancel" in _text(browser, "#action-message")
    assert not browser.find_element(By.ID, "cancel-button").is_enabled()

    # The job list: newest first, each with its status and progress.
    browser.get(f"{base}/")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{job_id}']"), 30, "the job list")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-job-id]")
    assert rows[0].get_attribute("data-job-id") == job_id and "cancelled" in rows[0].text
    assert any("succeeded" in r.text and str(tiny_model_dir) in r.text for r in rows[1:])
    _screenshot(browser, "dashboard-jobs.png")
