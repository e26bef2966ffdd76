"""The README's screenshot of the web app: the shapes example, the circle brushed over, P2P at 50 steps.

    python bench/ui_screenshot.py --out docs/img/ui.png

Starts `locedit ui` on the bundled model, drives it in headless Chromium (Debian's, through
Playwright), brushes over the red circle, runs the edit at the page's default 50 steps and saves
the page. Needs Chromium at /usr/bin/chromium (or LOCEDIT_CHROMIUM).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

CHROMIUM = os.environ.get("LOCEDIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img/ui.png")
    args = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "locedit", "ui", "--model", "shapes", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(1)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(url, wait_until="domcontentloaded")
            page.click("#example")
            page.wait_for_function("document.querySelector('#source textarea').value.includes('red circle')")
            page.locator("#editor button[aria-label='Brush']").click()
            box = page.locator("#editor canvas").first.bounding_box()
            # the image is shown as a centred square of 288/348 of the canvas's height (Gradio 6's fit at
            # this size); a stroke that starts outside the image paints nothing, so every stroke starts
            # on it. The example's circle: centre (0.30, 0.50) of the image, radius 0.17.
            side = box["height"] * 288 / 348
            left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
            cx, cy, r = left + 0.30 * side, top + 0.50 * side, 0.17 * side
            for k in range(-4, 5):
                y = cy + r * k / 5
                half = (r * r - (r * k / 5) ** 2) ** 0.5
                page.mouse.move(cx - half, y)
                page.mouse.down()
                page.mouse.move(cx + half, y, steps=8)
                page.mouse.up()
            page.click("#run")
            page.wait_for_selector("#edited img")
            page.wait_for_function("document.querySelector('#command').innerText.includes('locedit edit')")
            page.screenshot(path=args.out, full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
