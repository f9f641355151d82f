"""The playground page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium) against a real `promptserve serve` on the mini backbone.

Set PLAYGROUND_SCREENSHOT=docs/playground.png to refresh the docs' screenshot from this run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.servers import Server, copy_store, start_server, stop_server

pytestmark = pytest.mark.slow  # real server processes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
KEY = "playground-secret"
WAIT_S = 90

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs the Debian packages chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver; .ci/run installs them)",
)


def test_page_and_assets_are_served_without_the_key(server: Server) -> None:
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/static/playground.js"' in page.text
    script = httpx.get(f"{server.url}/static/playground.js", timeout=10)
    assert script.headers["content-type"].startswith("text/javascript")
    assert "Authorization" in script.text
    assert httpx.get(f"{server.url}/static/playground.css", timeout=10).status_code == 200
    outside = f"{server.url}/static/..%2Fsettings.py"  # no route: 401 without a key, else 404
    assert httpx.get(outside, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(outside, headers=auth, timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/static/nope.js", timeout=10).status_code == 404  # public
    assert httpx.get(f"{server.url}/classifiers", timeout=10).status_code == 401  # the API is not
    # the page takes the key: only its own files run, no framing, no type sniffing
    for response in (page, script):
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy, policy
        assert "frame-ancestors 'none'" in policy, policy
        assert "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


@pytest.fixture(scope="module")
def server(mini_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("playground")
    running = start_server(
        copy_store(mini_template_store, root / "store"),
        root / "server.log",
        timeout=300,
        PROMPTSERVE_API_KEY=KEY,
        PROMPTSERVE_JOB_THREADS="1",
        PROMPTSERVE_MAX_IMAGES_PER_REQUEST="16",
        PROMPTSERVE_MAX_BODY_BYTES="5000000",
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """A red star to classify, and four images of each of two classes to tune on."""
    import numpy as np

    from promptserve.training.synthetic.tasks import SyntheticSpec, render_item
    from promptserve.training.synthetic.world import render, sample_scene

    root = tmp_path_factory.mktemp("playground-images")
    star = root / "red_star.png"
    scene = sample_scene(
        np.random.default_rng(0), shape="star", colour="red", style="filled", background="plain"
    )
    render(scene).save(star)
    files: dict[str, list[Path]] = {"star": [star]}
    spec = SyntheticSpec(task="color-shape", seed=3)
    for name, part in (("red circle", "part 17"), ("blue square", "part 42")):
        files[part] = []
        for i in range(4):
            path = root / f"{part.replace(' ', '-')}-{i}.png"
            render_item(spec, "train", name, i).save(path)
            files[part].append(path)
    return files


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1400")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_classify_add_a_label_and_tune_in_the_browser(
    server: Server, images: dict[str, list[Path]], browser: object, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def texts(selector: str) -> list[str]:
        # read in one script: the page may re-render between a lookup and a read, and an
        # element looked up before that is stale
        script = "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)"
        return [str(found) for found in browser.execute_script(script, selector)]

    def labels() -> list[str]:
        return texts("#results .scores .name")

    browser.get(server.url + "/")
    # without the key the page says what is missing; with it, the classifiers appear
    wait.until(lambda _: "API key" in text("notice"))
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY, Keys.TAB)  # change event: the page reloads the classifiers with the key
    wait.until(lambda _: "default" in text("classifiers") and "zeroshot" in text("classifiers"))
    assert not browser.find_element(By.ID, "notice").is_displayed()
    assert "ready" in text("health")

    browser.find_element(By.ID, "files").send_keys(str(images["star"][0]))
    wait.until(lambda _: labels())
    assert labels()[0] == "red star", labels()
    assert len(labels()) == 5  # the default top-k

    extra = browser.find_element(By.ID, "extra-labels")
    extra.send_keys("red star, crimson kite")
    browser.find_element(By.ID, "only-extra").click()  # change: classify over these two only
    wait.until(lambda _: sorted(labels()) == ["crimson kite", "red star"])
    assert labels()[0] == "red star"
    assert texts("#results .scores li.new .name") == ["crimson kite"]

    name = browser.find_element(By.ID, "job-name")
    name.clear()
    name.send_keys("parts")
    browser.find_element(By.ID, "job-shots").clear()
    browser.find_element(By.ID, "job-shots").send_keys("2")  # the other 2 per class: held out
    browser.find_element(By.ID, "job-epochs").send_keys("2")
    groups = browser.find_elements(By.CSS_SELECTOR, "#groups .group")
    for group, part in zip(groups, ("part 17", "part 42"), strict=True):
        group.find_element(By.CSS_SELECTOR, "input.group-label").send_keys(part)
        picker = group.find_element(By.CSS_SELECTOR, "input.group-files")
        picker.send_keys("\n".join(str(path) for path in images[part]))
        assert "4 images" in str(group.text)
    browser.find_element(By.ID, "start-job").click()
    wait.until(lambda _: text("job-state") in {"succeeded", "failed", "cancelled"})
    assert text("job-state") == "succeeded", text("job-detail")
    assert "serving parts v1" in text("job-detail")
    assert "held-out" in text("job-detail")
    assert "on 4 images" in text("job-detail")
    events = text("job-events")
    assert "started" in events.lower(), events
    assert "published" in events.lower(), events

    # the new version is listed with its accuracies, selected, and classifies the star
    wait.until(lambda _: "parts" in text("classifiers"))
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#classifiers tbody tr')]"
        ".map(r => [...r.querySelectorAll('td')].map(c => c.innerText))"
    )
    cells = next([str(c) for c in row] for row in rows if row and row[0] == "parts")
    assert cells[:3] == ["parts", "1", "coop"], cells
    assert cells[4] == "2", cells
    assert cells[5].endswith("%"), cells  # held-out, tuned
    assert cells[6].endswith("%"), cells  # held-out, zero-shot
    assert browser.find_element(By.ID, "classifier").get_attribute("value") == "parts"
    wait.until(lambda _: "parts v1" in text("classify-status"))

    screenshot = tmp_path / "playground.png"
    browser.find_element(By.ID, "only-extra").click()  # back to the classifier's own classes
    extra.clear()
    browser.find_element(By.ID, "classifier").send_keys("default")
    wait.until(lambda _: "default v1" in text("classify-status") and labels()[0] == "red star")
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # everything above ran under the page's Content-Security-Policy, which blocked nothing
    console = [str(entry["message"]) for entry in browser.get_log("browser")]
    assert not [line for line in console if "Content Security Policy" in line], console
    target = os.environ.get("PLAYGROUND_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, target)
