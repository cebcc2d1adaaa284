"""The playground page (``GET /``) in a real browser: headless Chromium from Debian's packages, driven by selenium.

A real server process; the page is used as a person would: type a prompt, see
the text stream in and the progress bar fill, press stop mid-generation and
see the slot freed. The browser may reach 127.0.0.1 only (every other host
name fails to resolve), and the page must load nothing but itself. A
screenshot of the finished page is kept in ``tests/artifacts/playground.png``
(and of the stopped one in ``playground-stopped.png``).

Skipped when selenium or ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
are missing (``.ci/run`` installs them with apt-get when it can).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
GENERATION_TIMEOUT = 300.0  # seconds; generous: a loaded 2-core machine is slow, and nothing here times anything

pytestmark = [
    pytest.mark.skipif(webdriver is None, reason="selenium is not installed (it is in the 'test' extra)"),
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason=f"headless Chromium is missing: {CHROMIUM} and {CHROMEDRIVER} come from Debian's "
        "'chromium' and 'chromium-driver' packages (.ci/run installs them when apt-get can)",
    ),
]

# A src/href/url() that leaves the page: an absolute or protocol-relative URL.
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?)(?:[a-z]+:)?//""", re.I
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--n-ctx", "4096", "--max-concurrency", "2", backend="asyncio") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path too, selenium-manager never runs
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing but the test server resolves
        f"--user-data-dir={profile}",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def open_page(browser: Any, server: ServerProcess) -> None:
    browser.get(server.base_url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "send").is_enabled())
    browser.get_log("browser")  # drop what an earlier test left


def fill(browser: Any, element_id: str, value: str) -> None:
    element = browser.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def state(browser: Any) -> str:
    value: str = browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")
    return value


def output_text(browser: Any) -> str:
    text: str = browser.execute_script("return document.getElementById('output').textContent")
    return text


def wait_for(browser: Any, condition: Callable[[Any], Any], timeout: float, what: str) -> Any:
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        status = browser.find_element(By.ID, "status").text
        pytest.fail(f"timed out after {timeout} s waiting for {what}; status: {status!r}, state: {state(browser)!r}")


def console_errors(browser: Any) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_is_self_contained(server: ServerProcess, browser: Any) -> None:
    response = httpx.get(server.base_url + "/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert EXTERNAL.search(html) is None, EXTERNAL.search(html)
    assert "{{MODEL}}" not in html
    assert str(server.health()["model"]) in html

    open_page(browser, server)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(performance.getEntriesByType('navigation').map(e => e.name))"
    )
    assert loaded, "the browser recorded no navigation"
    assert all(url.startswith(server.base_url + "/") for url in loaded), loaded
    for element_id in ("prompt", "send", "stop", "output", "progress", "status", "max-tokens", "temperature"):
        browser.find_element(By.ID, element_id)
    assert not browser.find_element(By.ID, "stop").is_enabled()
    assert console_errors(browser) == []


def test_streams_text_and_fills_the_progress_bar(server: ServerProcess, browser: Any) -> None:
    open_page(browser, server)
    fill(browser, "max-tokens", "24")
    fill(browser, "prompt", "Write a short poem about the sea.")
    browser.find_element(By.ID, "send").click()

    wait_for(browser, lambda d: output_text(d).strip(), GENERATION_TIMEOUT, "streamed text")
    wait_for(browser, lambda d: state(d) in ("done", "error", "stopped"), GENERATION_TIMEOUT, "the end")
    status = browser.find_element(By.ID, "status").text
    assert state(browser) == "done", status
    assert re.fullmatch(r"done: \d+ tokens, \d+\.\d tok/s \(.+\)", status), status
    assert output_text(browser).strip()
    progress = browser.find_element(By.ID, "progress")
    assert float(progress.get_property("max")) == 24
    assert float(progress.get_property("value")) == 24  # full, even when the text ended before the budget
    assert "tok/s" in browser.find_element(By.ID, "progress-text").text
    assert browser.find_element(By.ID, "send").is_enabled()
    assert not browser.find_element(By.ID, "stop").is_enabled()
    assert console_errors(browser) == []

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "playground.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    server.wait_idle(timeout=30)


def test_stop_cancels_the_request_and_frees_the_slot(server: ServerProcess, browser: Any) -> None:
    served = server.wait_idle(timeout=30)["requests_served"]
    open_page(browser, server)
    # A completion at temperature 0 and a budget far beyond what streams before the
    # stop: it is still running when stop is pressed, however fast the machine.
    browser.find_element(By.CSS_SELECTOR, "#mode option[value=completion]").click()
    fill(browser, "max-tokens", "1500")
    fill(browser, "temperature", "0")
    fill(browser, "prompt", "The history of the city begins")
    browser.find_element(By.ID, "send").click()

    wait_for(
        browser,
        lambda d: len(output_text(d)) > len("The history of the city begins") and server.health()["slots_busy"] >= 1,
        GENERATION_TIMEOUT,
        "streamed text while a slot is busy",
    )
    assert state(browser) == "running"
    browser.find_element(By.ID, "stop").click()

    wait_for(browser, lambda d: state(d) != "running", 30, "the page to stop")
    status = browser.find_element(By.ID, "status").text
    assert state(browser) == "stopped", status
    assert status.startswith("stopped"), status
    stopped_text = output_text(browser)
    health = server.wait_idle(timeout=30)  # the disconnect cancelled the request and freed its slot
    assert health["slots_busy"] == 0 and health["admitted"] == 0, health
    assert health["requests_served"] == served + 1, health
    assert output_text(browser) == stopped_text  # nothing arrives after the stop
    assert browser.find_element(By.ID, "send").is_enabled()
    assert not browser.find_element(By.ID, "stop").is_enabled()
    assert console_errors(browser) == []
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground-stopped.png"))


def test_shows_the_servers_error_message(server: ServerProcess, browser: Any) -> None:
    # More than a slot's context holds: the server answers 400 before any decoding.
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1_000_000, "stream": True}
    response = httpx.post(server.api_url + "/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    message = response.json()["error"]["message"]

    open_page(browser, server)
    fill(browser, "max-tokens", "1000000")
    fill(browser, "prompt", "Hello")
    browser.find_element(By.ID, "send").click()

    wait_for(browser, lambda d: state(d) != "running", GENERATION_TIMEOUT, "the error")
    assert state(browser) == "error"
    assert browser.find_element(By.ID, "status").text == f"error: {message}"
    assert output_text(browser) == ""
    server.wait_idle(timeout=30)
