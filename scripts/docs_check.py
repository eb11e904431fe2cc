"""Look at the built documentation site as a reader would (``make docs-check``; not part of CI).

Serves ``site/`` with ``python -m http.server`` on a free port of 127.0.0.1, opens the home page and
the SmoothedClassifier API page in headless Chromium, saves ``site-check/home.png`` and
``site-check/classifier.png``, checks that each screenshot is a real picture (not one flat colour),
and that the search index holds API names. Run ``make docs`` first (the make target does).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "site"
OUT = REPO / "site-check"
PAGES = {"home.png": "index.html", "classifier.png": "api/classifier.html"}
SEARCH_NAMES = ("SmoothedClassifier", "certify_curve", "Certificate", "clopper_pearson_lower")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_served(url: str, attempts: int = 50) -> None:
    for _ in range(attempts):  # at most about 10 s
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"docs-check: {url} was not served")


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("docs-check: no Chromium found: apt-get install -y chromium")


def screenshot(chrome: str, url: str, png: Path) -> None:
    png.unlink(missing_ok=True)
    cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1000",
           "--virtual-time-budget=5000", f"--screenshot={png}", url]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise SystemExit(f"docs-check: Chromium wrote no screenshot of {url}")


def check_picture(png: Path) -> str:
    try:
        from PIL import Image  # Pillow comes with matplotlib (the plot extra, part of test)
    except ImportError:  # a blank 1280x1000 page compresses to under 10 KB; a rendered one to 100 KB or more
        size = png.stat().st_size
        if size < 30_000:
            raise SystemExit(f"docs-check: {png} is only {size} bytes: a blank page?") from None
        return f"{size} bytes (Pillow not installed: size checked only)"
    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
        if colours is not None and len(colours) < 8:
            raise SystemExit(f"docs-check: {png} has only {len(colours)} colours: a blank page?")
        return f"{im.size[0]}x{im.size[1]}, {'many' if colours is None else len(colours)} colours"


def check_search_index() -> None:
    index = json.loads((SITE / "search" / "search_index.json").read_text())
    text = " ".join(doc.get("title", "") + " " + doc.get("text", "") + " " + doc.get("location", "")
                    for doc in index["docs"])  # fmt: skip
    missing = [name for name in SEARCH_NAMES if name not in text]
    if missing:
        raise SystemExit(f"docs-check: the search index lacks {missing}")
    print(f"docs-check: search index: {len(index['docs'])} entries, holds {', '.join(SEARCH_NAMES)}")


def main() -> None:
    if not (SITE / "index.html").is_file():
        raise SystemExit("docs-check: no site/index.html: run 'make docs' first")
    check_search_index()
    chrome = browser()
    OUT.mkdir(exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(SITE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_served(base + "index.html")
        for png, page in PAGES.items():
            screenshot(chrome, base + page, OUT / png)
            print(f"docs-check: {OUT.name}/{png} <- {page} ({check_picture(OUT / png)})")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
