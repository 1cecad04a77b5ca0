"""Regenerate docs/images/app.png: the web app in Chromium after reconstructing the bundled teddy
bear with every page default (resolution 128, the packaged model, this machine's CPU).

    python docs/images/app_screenshot.py [-o docs/images/app.png]

Needs the app and dev extras (gradio, playwright) and Debian's Chromium (/usr/bin/chromium), as the
app's browser test does (docs/app.md, "Tests"); SwiftShader draws the 3D view without a GPU.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [  # as tests/test_app.py: no background connections in a closed network, software WebGL
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]  # fmt: skip


def main() -> None:
    from playwright.sync_api import sync_playwright

    from zsw.app import build_app, serve
    from zsw.infer.settings import ReconstructSettings
    from zsw.io import atomic_write_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images" / "app.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(ReconstructSettings(device="cpu"))
    url = serve(demo, port=port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#examples").get_by_text("teddy_bear.png").click()  # the example's thumbnail
            page.locator("#photo").get_by_text("teddy_bear").wait_for(timeout=30_000)
            page.locator("#shown img").wait_for(timeout=30_000)
            page.locator("#run").click()
            page.locator("#status").get_by_text("vertices").wait_for(timeout=300_000)
            viewer = page.locator("#model canvas")  # babylon.js draws the GLB after the event returns
            for _ in range(60):  # poll the viewer (in view) until the mesh is drawn, as the app's test does
                pixels = np.asarray(Image.open(io.BytesIO(viewer.screenshot())).convert("L"))
                if (pixels < 200).mean() > 0.02:
                    break
                page.wait_for_timeout(500)
            page.mouse.move(0, 0)  # no hover highlight where the pointer last clicked
            page.wait_for_timeout(1_000)
            shot = page.screenshot(full_page=True)
            browser.close()
    finally:
        demo.close()
    atomic_write_bytes(args.out, shot)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
