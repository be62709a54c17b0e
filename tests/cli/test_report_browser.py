"""The report in a real browser: Chromium (Debian's) driven by Playwright.

A run of two multi-model iterations and each model on its own, its ``index.html`` opened from
the file system as a user opens it: no error in the browser's console, every image loads, the
slider over the iterations swaps the figures for the iteration chosen (and they load), and every
link to a file of the run finds it. Skipped where Playwright or Chromium is missing; ``.ci/run``
installs both.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from helpers import random_atoms_map

from multirefine.cli.main import main
from multirefine.io.maps import write_map

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium)")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    for k, seed in enumerate((1, 2), 1):
        write_map(root / f"map{k}.mrc", random_atoms_map(32, 200, seed=seed), 1.0)
    assert main(["simulate", str(root / "sim"), "--maps", f"{root}/map1.mrc,{root}/map2.mrc", "--n", "300",
                 "--snr", "1", "--seed", "3"]) == 0
    assert main(["refine", "--input", str(root / "sim" / "particles.star"), "--models", f"{root}/map1.mrc,{root}/map2.mrc",
                 "--iter", "2", "--singleiter", "2", "--targetres", "8", "--speed", "8", "--j", "1",
                 "--path", str(root / "run")]) == 0
    return root / "run"


def test_the_report_works_in_chromium(run):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto((run / "index.html").as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "all => all.map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert images and [src for src, width in images if not width] == [], images
            assert page.locator("#iteration").count() == 1
            page.eval_on_selector("#iteration", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
            page.wait_for_load_state("load")
            page.wait_for_function("[...document.querySelectorAll('img[data-pattern]')].every(i => i.complete)")
            swapped = page.eval_on_selector_all(
                "img[data-pattern]", "all => all.map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert swapped and all("_01.png" in src and width for src, width in swapped), swapped
            assert page.locator("span.iteration").first.text_content().strip() == "1"
            links = page.eval_on_selector_all("a[href]", "all => all.map(a => a.href)")
            local = [Path(unquote(urlparse(href).path)) for href in links if href.startswith("file:")]
            assert local and [p for p in local if not p.exists()] == [], links
            assert problems == [], problems
        finally:
            browser.close()
