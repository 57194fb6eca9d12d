"""Screenshots of the built documentation site in Chromium (Debian's chromium + chromedriver, driven by
Selenium, offline), for the issue's closing note and ``docs/screenshots/``:

    mkdocs build --strict -d /tmp/site && python3 tools/docs_screenshots.py /tmp/site docs/screenshots

The site is served from SITE by a local HTTP server on 127.0.0.1 (any free port); each page is
opened, checked to have rendered (its title, no request that failed in the browser's console) and
saved at its full height: ``home.png`` (the home page) and ``tutorial.png`` (the first-map tutorial).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGES = {"home.png": "", "tutorial.png": "tutorials/first-map/"}


def chrome(profile: Path):
    """Headless Chromium, no network of its own (as tests/test_serve_live.py drives it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a driver or browser online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build -d SITE)")
    parser.add_argument("out", type=Path, help="where to write home.png and tutorial.png")
    parser.add_argument("--max-height", type=int, default=2600, help="cap on a screenshot's height in pixels")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    with tempfile.TemporaryDirectory() as profile:
        driver = chrome(Path(profile))
        try:
            for name, path in PAGES.items():
                driver.set_window_size(1280, 900)
                driver.get(base + path)
                assert "camkit" in driver.title, driver.title
                errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
                if errors:
                    print(f"{name}: console errors: {errors}", file=sys.stderr)
                    return 1
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(int(height), args.max_height))
                driver.save_screenshot(str(args.out / name))
                print(f"{args.out / name}: {base + path} ({driver.title})")
        finally:
            driver.quit()
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
