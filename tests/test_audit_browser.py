"""The audit report in a real headless browser: keyboard review, reload, export of verdicts.jsonl.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and the ``selenium`` package (requirements-test.txt). Selenium is pointed at ``/usr/bin/chromedriver``
and ``/usr/bin/chromium``, so nothing is downloaded; the browser runs without network services.
"""
from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest

from linewatch.runtime.audit import write_report
from linewatch.runtime.inspect_run import RESULTS_NAME, read_results
from test_audit import ODD_NAME, make_results

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium and chromium-driver: "
                                                                 "apt-get install -y chromium chromium-driver")
CONTRACT_KEYS = {"source", "label", "score", "bundle", "reviewed_utc"}


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMEDRIVER.exists(), "chromium is installed but not its driver: apt-get install -y chromium-driver"

    monkeypatch.setenv("SE_OFFLINE", "true")          # selenium-manager must never download anything
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False,
                                           "safebrowsing.enabled": False})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _open(driver, report: Path) -> None:
    driver.get(report.as_uri())
    _wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), what="the report's script")


def _press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for k in keys:
        ActionChains(driver).send_keys(k).perform()


def test_keyboard_review_survives_a_reload_and_exports_verdicts(browser, small_category, small_bundle, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    results, src = make_results(small_category, small_bundle, tmp_path / "work")
    # the odd file name first, so the review covers it: give it the highest score
    records = read_results(results / RESULTS_NAME)
    odd = next(r for r in records if r["source"].endswith(ODD_NAME))
    assert odd["anomalous"]
    odd["score"] = max(r["score"] for r in records if r["score"] is not None) + 1.0
    (results / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    report = tmp_path / "usb stick" / "report.html"
    summary = write_report(results, small_bundle, report)
    flagged = sorted((r for r in records if r["anomalous"]), key=lambda r: -r["score"])
    assert summary["shown"] == len(flagged) >= 4

    _open(browser, report)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == len(flagged)
    assert "current" in cards[0].get_attribute("class")
    _press(browser, "d", "g", "d", "u", Keys.ARROW_DOWN, "k", "d")   # third verdict undone, then made again
    assert browser.find_element(By.ID, "reviewed").text == "3"
    assert browser.find_element(By.ID, "progress").text.startswith("reviewed 3 of")
    labels = [c.find_element(By.CSS_SELECTOR, ".verdict").text for c in cards[:4]]
    assert labels == ["defect", "good (false alarm)", "defect", "not reviewed"]

    # filters: a source substring hides the other cards; the review keys then skip hidden cards
    box = browser.find_element(By.ID, "f-source")
    box.send_keys("burn")
    visible = [c for c in cards if c.is_displayed()]
    assert 0 < len(visible) < len(cards)
    assert all("burn" in c.find_element(By.CSS_SELECTOR, ".src").text for c in visible)
    box.clear()
    box.send_keys(Keys.BACKSPACE)                               # clear() fires no input event
    browser.execute_script("document.getElementById('f-source').dispatchEvent(new Event('input'))")
    assert all(c.is_displayed() for c in cards)

    browser.refresh()                                           # verdicts live in localStorage
    _wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), what="reload")
    assert browser.find_element(By.ID, "reviewed").text == "3"
    browser.execute_script("document.activeElement && document.activeElement.blur()")   # keys to the page
    _press(browser, "e")
    out = _wait_for(lambda: [p for p in browser.downloads.glob("verdicts*.jsonl")], what="verdicts.jsonl")[0]
    lines = _wait_for(lambda: out.read_text().splitlines(), what="the download to finish")
    verdicts = [json.loads(line) for line in lines]

    assert len(verdicts) == 3
    assert [v["source"] for v in verdicts] == [r["source"] for r in flagged[:3]]
    assert verdicts[0]["source"].endswith(ODD_NAME)              # verbatim, through HTML, JS and localStorage
    assert [v["label"] for v in verdicts] == ["defect", "good", "defect"]
    for v, r in zip(verdicts, flagged):
        assert set(v) == CONTRACT_KEYS
        assert float(v["score"]) == r["score"]
        assert v["bundle"] == r["bundle"] == summary["bundle_id"]
        assert datetime.fromisoformat(v["reviewed_utc"]).tzinfo is not None
    # the export button does the same
    shutil.rmtree(browser.downloads)
    browser.downloads.mkdir()
    browser.find_element(By.ID, "export").click()
    again = _wait_for(lambda: [p for p in browser.downloads.glob("verdicts*.jsonl") if p.stat().st_size], what="export")
    assert [json.loads(x)["source"] for x in again[0].read_text().splitlines()] == [v["source"] for v in verdicts]
