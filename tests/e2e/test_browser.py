"""What people look at, in a real browser: headless Chromium (Debian's chromium and chromium-driver,
installed by `make browser`, which `make test` runs) driven by Selenium, against the live service
and a trained run's documents.

Each page must render its key content with no console error, no failed request and no request
to another host, and no text on it may overlap other text (the drawn boxes of every text node,
SVG text included). Screenshots go to test-artifacts/browser/ (ICANS_TEST_ARTIFACTS overrides).
The calculator is also used with the keyboard alone, and every control must have a name in
Chromium's accessibility tree (what a screen reader announces).
Skipped, with the reason, where Chromium or its driver is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="browser tests skipped: Debian's chromium and chromium-driver are not installed (make browser installs them)",
)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ICANS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"


def _free_port() -> int:
    """A free local port; within ICANS_TEST_PORTS ("8600-8699") when it is set (a shared machine)."""
    low, _, high = os.environ.get("ICANS_TEST_PORTS", "").partition("-")
    candidates = range(int(low), int(high) + 1) if low and high else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in {low}-{high}")


@pytest.fixture(scope="module")
def live(trained, tmp_path_factory):
    """The real app under uvicorn on a free local port (auth off: the pages need no key)."""
    import uvicorn

    from serving.app import create_app

    settings, _ = trained
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    s = settings.model_copy(update={"auth": "off", "cds_service_url": base,
                                    "store_url": f"sqlite:///{tmp_path_factory.mktemp('browser') / 'service.db'}"})
    server = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    import httpx

    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "the service did not become ready"
        time.sleep(0.2)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _visit(driver, url: str, ready_js: str, name: str, timeout: float = 30.0) -> dict:
    """Load url, wait until ready_js is true, then check the console and the network; screenshot."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser"), driver.get_log("performance")  # forget the previous page
    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return Boolean({ready_js})"))
    time.sleep(0.5)  # late requests (fonts, lazily loaded scripts) show up too
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    # the browser's own favicon.ico probe of a page that names no icon is not the page's request
    console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
    requests, failed, statuses = [], [], []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        if method == "Network.requestWillBeSent" and not params["request"]["url"].endswith("/favicon.ico"):
            requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            failed.append(params)
        elif method == "Network.responseReceived" and not params["response"]["url"].endswith("/favicon.ico"):
            statuses.append((params["response"]["url"], params["response"]["status"]))
    origin = urlsplit(url)
    foreign = [u for u in requests if not u.startswith(("data:", "blob:", "about:"))
               and (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]
    assert not console, console
    assert not failed, failed
    assert not foreign, f"requests to another host: {foreign}"
    assert all(status < 400 for _, status in statuses), statuses
    return {"requests": requests}


def test_swagger_ui_renders_from_local_assets_with_authorize(live, browser):
    seen = _visit(browser, f"{live}/docs", "document.querySelectorAll('.opblock').length >= 8", "docs")
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in seen["requests"])
    assert browser.find_element("css selector", ".btn.authorize").is_displayed()
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/v1/risk", "/v1/risk/explanation", "/v1/model/card"} <= paths


def test_redoc_renders(live, browser):
    _visit(browser, f"{live}/redoc", "document.querySelector('h1') && document.body.innerText.includes('/v1/risk')",
           "redoc")
    assert "Something went wrong" not in browser.page_source
    assert "icans-risk" in browser.find_element("css selector", "h1").text


def test_model_card_renders(live, browser):
    _visit(browser, f"{live}/v1/model/card", "document.querySelector('h1')", "model_card")
    text = browser.find_element("tag name", "body").text
    assert "Model card: icans-risk" in text and "registered version" in text
    assert "Research use only" in text and "`" not in text
    _no_overlapping_text(browser)


def test_the_page_a_cds_card_links_to(live, browser):
    import httpx

    from tests.helpers import hook_body, now_chart

    r = httpx.post(f"{live}/cds-services/icans-risk", json=hook_body(now_chart("pat-browser-1")), timeout=30)
    assert r.status_code == 200, r.text
    link = r.json()["cards"][0]["links"][0]["url"]
    _visit(browser, link, "document.querySelector('svg')", "explanation_page")
    text = browser.find_element("tag name", "body").text
    assert "Research use only" in text and "this patient" in text and "pat-browser-1" not in browser.page_source
    assert text.count("Research use only") == 1  # the notice once, not in the banner, the picture and the foot
    assert "between" in browser.find_element("id", "interval").text  # the card's interval, in words
    assert "_pg_ml" not in text and "_mg_l" not in text  # people's names, not column names
    box = browser.execute_script("const r = document.querySelector('svg').getBoundingClientRect(); return [r.width, r.height]")
    assert box[0] > 400 and box[1] > 400
    assert _no_overlapping_text(browser) > 40  # the page's and the SVG's text, compared


def test_validation_report_and_model_card_files(trained, browser, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    report = Path(client.download_artifacts(result.run_id, "validation_report.html", str(tmp_path)))
    _visit(browser, report.as_uri(), "document.images.length > 0 && [...document.images].every(i => i.complete)",
           "validation_report")
    widths = browser.execute_script("return [...document.images].map(i => i.naturalWidth)")
    assert widths and all(w > 300 for w in widths), widths  # every figure decoded
    text = browser.find_element("tag name", "body").text
    for heading in ("Summary", "Discrimination", "Calibration", "ROC curves and SHAP summary"):
        assert heading in text, heading
    _no_overlapping_text(browser)
    card = Path(client.download_artifacts(result.run_id, "evidence/model_card.html", str(tmp_path)))
    _visit(browser, card.as_uri(), "document.querySelector('h1')", "model_card_file")
    assert browser.find_element("css selector", "h1").text == "Model card: icans-risk"
    rows = browser.execute_script(
        "return [...document.querySelectorAll('tr')].map(r => [...r.cells].map(c => c.textContent.trim()))")
    assert ["registered version", str(result.version)] in rows  # the run's card names its registered version
    _no_overlapping_text(browser)


@pytest.fixture(scope="module")
def mlflow_ui(trained):
    """`mlflow ui` (as `make mlflow-ui` runs it) on the trained store, on a free local port."""
    import subprocess
    import sys

    import httpx

    settings, _ = trained
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.time() < deadline, "mlflow ui did not start"
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def test_the_mlflow_ui_shows_the_run_its_description_and_datasets(trained, browser, mlflow_ui):
    """The MLflow UI's own console messages are its own (not asserted); no request leaves the host and
    the run page says what happened without opening a metric."""
    from selenium.webdriver.support.ui import WebDriverWait

    settings, result = trained
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    run = mlflow.get_run(result.run_id)
    url = f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{result.run_id}"
    browser.get_log("performance")
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: "Validation" in d.find_element("tag name", "body").text)
    time.sleep(1.0)
    browser.save_screenshot(str(ARTIFACTS / "mlflow_run.png"))
    text = browser.find_element("tag name", "body").text
    assert run.data.tags["chosen_family"] in text and "Quality gate" in text
    assert "development" in text or "all" in text  # the Datasets panel names the logged cohort
    requests = [json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                for e in browser.get_log("performance")]
    foreign = [u for u in requests if u.startswith("http") and not u.startswith(mlflow_ui)]
    assert not foreign, f"requests to another host: {foreign}"


# --- what a clinician reads: no overlapping text, the calculator by keyboard, a name on every input ---------

_OVERLAPS_JS = """
const boxes = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
let node = 0;
while (walker.nextNode()) {
  const n = walker.currentNode;
  node += 1;
  if (!n.textContent.trim() || !n.parentElement) continue;
  const closed = n.parentElement.closest('details:not([open])');
  if (closed && !n.parentElement.closest('summary')) continue;  // a closed <details>' content is not shown
  const st = getComputedStyle(n.parentElement);
  if (st.visibility === 'hidden' || st.display === 'none' || st.opacity === '0') continue;
  const range = document.createRange();
  range.selectNodeContents(n);
  for (const r of range.getClientRects()) {
    if (r.width > 0 && r.height > 0) boxes.push([node, n.textContent.trim().slice(0, 40), r.left, r.top, r.right, r.bottom]);
  }
}
const out = [];
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  if (a[0] === b[0]) continue;
  const dx = Math.min(a[4], b[4]) - Math.max(a[2], b[2]), dy = Math.min(a[5], b[5]) - Math.max(a[3], b[3]);
  if (dx > 1 && dy > 1) out.push([a[1], b[1]]);
}
return [boxes.length, out];
"""


def _no_overlapping_text(driver) -> int:
    """Asserts that no two text nodes' boxes overlap (more than a pixel each way); returns how many were compared."""
    n, overlaps = driver.execute_script(_OVERLAPS_JS)
    assert not overlaps, overlaps[:10]
    return n


def _unnamed_controls(driver) -> list[str]:
    """Form controls without an accessible name in Chromium's accessibility tree (what a screen reader reads)."""
    tree = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})
    unnamed = []
    for n in tree["nodes"]:
        role = (n.get("role") or {}).get("value")
        if role in ("textbox", "spinbutton", "combobox", "radio", "checkbox", "button", "listbox") and not n.get("ignored"):
            name = ((n.get("name") or {}).get("value") or "").strip()
            if not name:
                unnamed.append(f"{role} {n.get('backendDOMNodeId')}")
    return unnamed


def test_the_overlap_check_sees_an_overlap(browser):
    browser.get("data:text/html,<p style='position:absolute;top:10px'>first words</p>"
                "<p style='position:absolute;top:14px'>second words</p>")
    with pytest.raises(AssertionError):
        _no_overlapping_text(browser)


def test_the_calculator_names_every_input_and_is_used_by_keyboard_alone(live, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from core import display
    from core.contract import FEATURES, example_request

    _visit(browser, f"{live}/calculator", "document.querySelector('form')", "calculator_empty")
    assert _unnamed_controls(browser) == []
    # the DOM check too: every control has a <label for> with text, every yes/no pair its fieldset's legend
    unlabelled = browser.execute_script("""
      return [...document.querySelectorAll('input, select, textarea')].filter(e => e.type !== 'hidden')
        .filter(e => !(e.labels && e.labels.length && [...e.labels].every(l => l.textContent.trim())))
        .map(e => e.id || e.name);""")
    assert unlabelled == []
    legends = browser.execute_script("""
      return [...document.querySelectorAll('input[type=radio]')].every(r => {
        const f = r.closest('fieldset'); return f && f.querySelector('legend') && f.querySelector('legend').textContent.trim(); });""")
    assert legends
    _no_overlapping_text(browser)

    record = example_request()
    browser.find_element("tag name", "body").click()
    order: list[str] = []

    def tab() -> object:
        browser.switch_to.active_element.send_keys(Keys.TAB)
        return browser.switch_to.active_element

    for f in FEATURES:
        el = tab()
        for _ in range(5):  # the hint text is not focusable; only controls are
            if el.get_attribute("name") == f.name:
                break
            el = tab()
        assert el.get_attribute("name") == f.name, (f.name, el.get_attribute("name"))
        order.append(f.name)
        value = record.get(f.name)
        if value is None:
            continue  # an optional lab left empty
        if f.kind == "bool":
            el.send_keys(Keys.SPACE)  # selects the first radio ("yes"); an arrow moves to "no"
            if value is False:
                el.send_keys(Keys.ARROW_RIGHT)
        elif f.kind == "category":
            el.send_keys(f.category_text(str(value)))  # typing an option's text selects it
        else:
            el.send_keys(str(value))
    assert order == [f.name for f in FEATURES]  # the tab order is the contract's order
    button = tab()
    assert button.tag_name == "button"
    button.send_keys(Keys.ENTER)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements("id", "result"))
    time.sleep(0.3)
    browser.save_screenshot(str(ARTIFACTS / "calculator_result.png"))
    import httpx

    api = httpx.post(f"{live}/v1/risk", json=record, timeout=30).json()
    text = browser.find_element("tag name", "body").text
    assert f"{display.percent(api['risk'])} (risk group {api['risk_group']})" in text
    lo, hi = api["uncertainty"]["interval"]
    assert f"between {display.percent(lo)} and {display.percent(hi)}" in text
    assert text.count("Research use only") == 1  # once, at the top
    assert browser.find_elements("css selector", "#result svg")
    _no_overlapping_text(browser)


def test_the_calculator_errors_are_listed_and_linked(live, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{live}/calculator")
    browser.execute_script("""
      document.querySelector('form').noValidate = true;
      document.getElementById('crp_mg_l').value = '700';
      document.querySelector('form').submit();""")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements("id", "errors"))
    time.sleep(0.3)
    browser.save_screenshot(str(ARTIFACTS / "calculator_errors.png"))
    errors = browser.find_element("id", "errors").text
    assert "CRP: must be a number, at least 0 and at most 600 mg/L" in errors and "700" not in errors
    assert browser.find_element("id", "crp_mg_l").get_attribute("aria-invalid") == "true"
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#errors a")]
    assert all("#" in h for h in links) and any(h.endswith("#crp_mg_l") for h in links)
    assert _unnamed_controls(browser) == []
    _no_overlapping_text(browser)
