"""report.html: self-contained, the summary's own numbers, and a page that works in a real browser.

The browser test drives headless Chromium with selenium (Debian: ``apt-get install chromium
chromium-driver``; .ci/run installs them). It is skipped, saying why, only where neither can be found.
Set CAMZOO_UPDATE_DOCS_IMG=1 to write its screenshot to docs/img/report.png (docs/results.md shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import markdown_tables

ROOT = Path(__file__).resolve().parents[1]
DATA = re.compile(r"const DATA = (.*?);\n", re.S)


@pytest.fixture(scope="module")
def run_dir(tiny_bench_run) -> Path:
    return tiny_bench_run


def page_data(path: Path) -> dict:
    return json.loads(DATA.search(path.read_text(encoding="utf-8")).group(1))


def test_report_html_is_one_file_with_the_summarys_numbers(run_dir):
    page = run_dir / "report.html"  # camzoo bench writes it by default
    text = page.read_text(encoding="utf-8")
    # nothing to fetch: no external scripts, styles, images or requests (the SVG namespace is a name, not a URL)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "fetch(" not in text and "XMLHttpRequest" not in text and "@import" not in text
    assert text.replace("http://www.w3.org/2000/svg", "").count("http") == 0
    from camzoo.methods import reference_method_names

    assert page_data(page)["controls"] == reference_method_names()  # the page marks the registry's controls
    assert page.stat().st_size < 2_000_000

    data = page_data(page)
    (group,) = data["groups"]
    summary = pd.read_csv(run_dir / "summary.csv")
    markdown = {heading: rows for heading, rows in markdown_tables((run_dir / "summary.md").read_text(encoding="utf-8"))}
    causal = next(t for t in group["tables"] if t["name"] == "causal")
    assert [(r["kind"], r["method"]) for r in causal["rows"]] == list(zip(summary["kind"], summary["method"]))
    assert [t["name"] for t in group["tables"]] == ["causal", "localisation", "stability", "faithfulness", "normalised"]
    for table in group["tables"]:  # summary.md's tables, cell for cell; bold there is the flag here
        rows = markdown[f"shapes / resnet8 — {table['title']}"]
        assert [c["header"] for c in table["columns"]] == rows[0][2:]
        body = {(cells[0], cells[1].replace("*", "")): cells[2:] for cells in rows[1:]}
        assert len(body) == len(table["rows"])
        for row in table["rows"]:
            cells = body[(row["kind"], row["label"])]
            assert [c["text"] for c in row["cells"]] == [c.strip("*") for c in cells]
            assert ["".join(c["parts"]) for c in row["cells"]] == [c["text"] for c in row["cells"]]
            assert [c["best"] for c in row["cells"]] == [c.startswith("**") for c in cells]
    assert any(c["best"] or c["tie"] for t in group["tables"] for r in t["rows"] for c in r["cells"])
    deletion = next(c for c in causal["columns"] if c["metric"] == "deletion")
    assert deletion["header"].startswith("Deletion AUC ↓") and "(label, 4 steps)" in deletion["title"]  # the protocol on hover
    cards = pd.read_csv(run_dir / "reliability.csv").set_index("metric")
    if cards.loc["deletion", "verdict"] == "report":  # marked, and the card's reason on hover
        assert deletion["header"] == "Deletion AUC ↓ †" and cards.loc["deletion", "reason"] in deletion["title"]
    assert [c["metric"] for c in group["cards"]] == list(cards.index)

    board, board_md = group["leaderboard"], markdown["shapes / resnet8 — leaderboard"]  # the leaderboard, as summary.md's
    ranked = [cells for cells in board_md[1:] if "(control)" not in cells[0]]
    assert [f"{r['kind']} / {r['method']} ({r['rank']:.2f})" for r in board["rows"]] == [cells[0] for cells in ranked]
    assert [[" ".join(filter(None, (c["text"], c["letters"]))) for c in r["cells"]] for r in board["rows"]] == [
        cells[1:] for cells in ranked]
    controls = summary[summary["reference"]]
    assert [(r["kind"], r["method"]) for r in board["controls"]] == list(zip(controls["kind"], controls["method"]))
    assert [p["name"] for p in group["pictures"]][0] == "heatmap_shapes_resnet8"
    assert all(p["uri"].startswith("data:image/png;base64,") for p in group["pictures"])

    (deletion, _) = group["curves"]
    assert len(deletion["x"]) == 5 and {len(m) for s in deletion["series"] for m in s["models"]} == {5}
    browser = group["browser"]
    assert browser["count"] == 8 and len(browser["maps"]) == len(browser["rows"]) * 2  # every seed of every row
    assert set(browser["predictions"]) == {m["key"] for m in browser["models"]}
    assert all(uri.startswith("data:image/png;base64,") for uri in browser["maps"].values())
    assert {"images", "labels", "masks", "boxes"} <= set(browser["truth"]) and len(browser["truth"]["boxes"]) == 8
    pointing = next(m for m in browser["metrics"] if m["metric"] == "pointing_game")
    assert set(pointing["values"]["lfi|attention"]) == {"lfi|default|0", "lfi|default|1"}
    assert all(v in (0, 1) for v in pointing["values"]["lfi|attention"]["lfi|default|0"])


def _browser_paths() -> tuple[str | None, str | None]:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
    return found, shutil.which("chromedriver")


def _driver(binary: str, chromedriver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # no network here: without these, Chromium stalls on updates, sync and QUIC probes
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _wait(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"the page did not get there within {timeout:.0f} s")


def test_camzoo_report_html_rebuilds_the_page_from_the_store_alone(run_dir, tmp_path):
    """`camzoo report DIR --html` on a directory holding nothing but results.sqlite."""
    from click.testing import CliRunner

    from camzoo.cli import main

    alone = tmp_path / "store_only"
    alone.mkdir()
    shutil.copy(run_dir / "results.sqlite", alone / "results.sqlite")
    result = CliRunner().invoke(main, ["report", str(alone), "--html"])
    assert result.exit_code == 0, result.output
    assert page_data(alone / "report.html") == page_data(run_dir / "report.html")


def test_report_html_in_headless_chromium(run_dir, tmp_path):
    binary, chromedriver = _browser_paths()
    if binary is None or chromedriver is None:
        pytest.skip("no Chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By

    summary = pd.read_csv(run_dir / "summary.csv")
    with tempfile.TemporaryDirectory() as profile:
        driver = _driver(binary, chromedriver, profile)
        try:
            driver.get((run_dir / "report.html").as_uri())
            detail = driver.find_element(By.ID, "detail-0")
            _wait(lambda: detail.get_attribute("data-shown-image") == "0")  # the first image, drawn

            rows = driver.find_elements(By.CSS_SELECTOR, "table.summary[data-name=causal] tbody tr")
            keys = [(r.get_attribute("data-kind"), r.get_attribute("data-method")) for r in rows]
            assert keys == list(zip(summary["kind"], summary["method"]))  # one row per (kind, method)

            # clicking a header sorts by it, ascending then descending (rows without a value last)
            column = 3  # deletion
            header = driver.find_elements(By.CSS_SELECTOR, "table.summary[data-name=causal] th")[column]

            def values():
                return [float(v) for v in driver.execute_script(
                    "return Array.from(document.querySelectorAll('table.summary[data-name=causal] tbody tr'))"
                    f".map(r => r.cells[{column}].dataset.value)")]

            before = values()
            header.click()
            assert values() == sorted(before) and header.get_attribute("aria-sort") == "ascending"
            header.click()
            assert values() == sorted(before, reverse=True)

            # choosing an image shows every method's map of that image for every seed
            driver.find_element(By.CSS_SELECTOR, ".thumb[data-image='5']").click()
            _wait(lambda: detail.get_attribute("data-shown-image") == "5")
            maps = driver.find_elements(By.CSS_SELECTOR, "#detail-0 canvas.map")
            assert len(maps) == len(summary) * 2 and {m.get_attribute("data-image") for m in maps} == {"5"}
            spread = driver.execute_script(  # a drawn map is not a blank canvas
                "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let lo = 255, hi = 0;"
                " for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }"
                "return hi - lo;", maps[0])
            assert spread > 20
            assert len(driver.find_elements(By.CSS_SELECTOR, "#detail-0 [data-prediction]")) == 4

            # sort and filter images by a per-image metric: where does LFI-CAM's attention miss the pointing game?
            driver.execute_script(
                "const b = document.getElementById('browser-0'), pick = (sel, test) => {"
                " const s = b.querySelector(sel); s.value = Array.from(s.options).find(o => test(o.text)).value;"
                " s.dispatchEvent(new Event('change')); };"
                "pick('.sort-metric', t => t.startsWith('Pointing game')); pick('.sort-row', t => t === 'lfi / attention');"
                "const hi = b.querySelector('.filter-max'); hi.value = '0'; hi.dispatchEvent(new Event('change'));")
            data = page_data(run_dir / "report.html")["groups"][0]["browser"]
            values_ = next(m for m in data["metrics"] if m["metric"] == "pointing_game")["values"]["lfi|attention"]
            misses = [i for i in range(8) if sum(v[i] for v in values_.values()) == 0]

            def shown():
                return sorted(int(t.get_attribute("data-image"))
                              for t in driver.find_elements(By.CSS_SELECTOR, "#browser-0 .thumb"))

            _wait(lambda: shown() == misses)

            # "Which columns to believe": a line per reliability card; a click shows the whole card
            cards = pd.read_csv(run_dir / "reliability.csv")
            lines = driver.find_elements(By.CSS_SELECTOR, "details.card")
            assert [line.get_attribute("data-metric") for line in lines] == list(cards["metric"])
            first = lines[0]
            assert not first.find_element(By.CSS_SELECTOR, "table.card-fields").is_displayed()
            driver.execute_script("arguments[0].scrollIntoView()", first)
            first.find_element(By.TAG_NAME, "summary").click()
            fields = first.find_element(By.CSS_SELECTOR, "table.card-fields")
            assert fields.is_displayed() and "alpha_ci_low" in fields.text and cards["reason"].iloc[0] in first.text
            assert "verdict: " in first.get_attribute("title")  # the whole card on hover too

            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            assert driver.find_element(By.ID, "error").text == ""
            shot = ROOT / "docs" / "img" / "report.png" if os.environ.get("CAMZOO_UPDATE_DOCS_IMG") else tmp_path / "report.png"
            driver.execute_script("document.getElementById('browser-0').scrollIntoView()")
            assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            driver.quit()


SPREAD = ("const image = arguments[0], c = document.createElement('canvas'); c.width = image.naturalWidth;"
          " c.height = image.naturalHeight; const ctx = c.getContext('2d'); ctx.drawImage(image, 0, 0);"
          " const d = ctx.getImageData(0, 0, c.width, c.height).data; let lo = 255, hi = 0;"
          " for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]); hi = Math.max(hi, d[i + 1]); }"
          " return hi - lo;")


def test_report_html_reads_on_a_laptop_screen(run_dir, tmp_path):
    """At 1280x800: the leaderboard and the pictures at the top, nothing wider than the window, the
    full tables' CIs folded into a toggle, sticky headers and first columns."""
    binary, chromedriver = _browser_paths()
    if binary is None or chromedriver is None:
        pytest.skip("no Chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as profile:
        driver = _driver(binary, chromedriver, profile)
        try:
            driver.set_window_size(1280, 800)
            driver.get((run_dir / "report.html").as_uri())
            _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#leaderboard-0 table.board tbody tr"))
            assert driver.execute_script("return window.innerWidth") <= 1280
            board = driver.find_element(By.ID, "leaderboard-0")
            width, client, page, view, top = driver.execute_script(
                "const b = arguments[0], d = document.documentElement;"
                "return [b.scrollWidth, b.clientWidth, d.scrollWidth, d.clientWidth, b.getBoundingClientRect().top];", board)
            assert width <= client and page <= view, (width, client, page, view)  # no horizontal scroll bar
            assert top < 800  # on the first screen
            rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard-0 tbody tr")
            assert rows[0].find_elements(By.CSS_SELECTOR, "sup.letters")  # mean and letters
            assert "controls, for reference" in board.text

            images = driver.find_elements(By.CSS_SELECTOR, "#group-0 .pictures img")
            names = [image.get_attribute("data-name") for image in images]
            assert names[0] == "heatmap_shapes_resnet8" and "ranks_shapes_resnet8_localisation" in names
            for image in images:  # decoded, with a size, and not blank
                _wait(lambda image=image: driver.execute_script("return arguments[0].complete", image))
                assert driver.execute_script("return arguments[0].naturalWidth * arguments[0].naturalHeight", image) > 0
                name = image.get_attribute("data-name")
                assert image.size["width"] <= view and driver.execute_script(SPREAD, image) > 100, name

            # the full tables fit as well, with the CIs folded away until asked for
            fits = driver.execute_script("return Array.from(document.querySelectorAll('table.full'))"
                                         ".map(t => [t.dataset.name, t.parentElement.scrollWidth, t.parentElement.clientWidth])")
            assert fits and all(scroll <= client for _, scroll, client in fits), fits
            cell = driver.find_element(By.CSS_SELECTOR, "table.full[data-name=causal] tbody tr td:nth-child(4)")
            assert "[" in cell.get_attribute("title") and "±" not in cell.text  # every number on hover
            header = driver.find_element(By.CSS_SELECTOR, "table.full[data-name=causal] th:nth-child(4)")
            assert header.text.startswith("Deletion AUC") and "label, 4 steps" in header.get_attribute("title")
            sticky = driver.execute_script("return [getComputedStyle(arguments[0]).position, getComputedStyle("
                                           "arguments[1]).position]", header, cell.find_element(By.XPATH, "../td[1]"))
            assert sticky == ["sticky", "sticky"]
            driver.find_element(By.CSS_SELECTOR, "input.show-ci").click()
            assert "±" in cell.text and "[" in cell.text

            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            assert driver.find_element(By.ID, "error").text == ""
            driver.execute_script("window.scrollTo(0, 0)")
            shot = ROOT / "docs" / "img" / "report_top.png" if os.environ.get("CAMZOO_UPDATE_DOCS_IMG") else tmp_path / "top.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
