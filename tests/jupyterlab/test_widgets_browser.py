"""ipywidgets in JupyterLab, in a real browser: Debian's chromium, headless, driven by
Playwright. One JupyterLab on loopback (a token, a spindle-python kernelspec in a temporary
JUPYTER_PATH) opens a notebook whose cells make an interact slider and a tqdm.notebook bar.
The test checks the DOM (the slider renders; moving it with the keyboard reruns the interact
callback and its output changes; the progress bar renders and fills) and the screenshots
(pixels of the slider and the bar are not blank), which it saves to a temporary directory."""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium is not installed (scripts/test.sh installs Debian's package)",
                allow_module_level=True)
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is in tests/requirements.txt")
pytest.importorskip("jupyterlab", reason="jupyterlab is in tests/requirements.txt")
pytest.importorskip("ipywidgets", reason="ipywidgets is in tests/requirements.txt")
from PIL import Image  # noqa: E402

# The kernel the notebook names; SPINDLE_LAB_KERNEL=python3 runs the same test on ipykernel.
KERNEL = os.environ.get("SPINDLE_LAB_KERNEL", "spindle-python")
START = 120  # seconds for JupyterLab, the page and the kernel on a loaded 2-core machine

CELLS = [
    "from ipywidgets import interact\n"
    "@interact(x=(0, 10))\n"
    "def show(x=3):\n"
    "    print(f'value is {x}')",
    "from tqdm.notebook import tqdm\n"
    "for _ in tqdm(range(5), desc='spindle-bar'):\n"
    "    pass",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(request, test_env):
    root = pathlib.Path(tempfile.mkdtemp(prefix="spindle-lab-"))
    prefix, work, shots = root / "prefix", root / "work", root / "screenshots"
    for d in (work, shots):
        d.mkdir()
    env = dict(test_env)
    env.update(
        JUPYTER_PATH=str(prefix / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_DATA_DIR=str(root / "data"),
        XDG_DATA_HOME=str(root / "xdg-data"),
        IPYTHONDIR=str(root / "ipython"),
        JUPYTER_PLATFORM_DIRS="0",
        HOME=str(root),
    )
    if KERNEL.startswith("spindle-"):
        spindle_bin = request.getfixturevalue("spindle_bin")
        subprocess.run([str(spindle_bin), "--python", sys.executable, "kernel", "install",
                        "--prefix", str(prefix)], env=env, check=True, capture_output=True, timeout=60)
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
                   "metadata": {}, "outputs": [], "source": c} for c in CELLS],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": KERNEL, "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (work / "widgets.ipynb").write_text(json.dumps(nb))
    port, token = free_port(), uuid.uuid4().hex
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--ServerApp.port_retries=0", "--allow-root", "--LabApp.extension_manager=readonly",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START
    while True:
        assert proc.poll() is None, (root / "lab.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "JupyterLab did not start:\n" + (root / "lab.log").read_text()[-3000:]
        time.sleep(0.3)  # polling an HTTP server that is starting: nothing to wait on instead
    try:
        yield {"url": f"{base}/lab/tree/widgets.ipynb?token={token}", "shots": shots, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print(f"screenshots kept in {shots}")


def pixels(img):
    get = getattr(img, "get_flattened_data", None) or img.getdata
    return list(get())


def not_blank(path, min_colors=3, min_ink=0.02):
    """A screenshot shows something: a few colours, and some share of pixels not background."""
    img = Image.open(path).convert("RGB")
    px = pixels(img)
    bg = max(set(px), key=px.count)
    ink = sum(1 for p in px if sum(abs(a - b) for a, b in zip(p, bg)) > 60) / len(px)
    colors = len(set(px))
    return colors >= min_colors and ink >= min_ink, {"colors": colors, "ink": round(ink, 3),
                                                     "size": img.size}


def has_hue(path, channel):
    """Some pixels are clearly coloured (`channel` 0 red, 1 green, 2 blue dominates)."""
    img = Image.open(path).convert("RGB")
    return sum(1 for p in pixels(img) if p[channel] > 100 and p[channel] - max(
        p[i] for i in range(3) if i != channel) > 40)


def test_slider_renders_moves_and_updates_the_interact_output_and_tqdm_bar_renders(lab):
    ms = START * 1000
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(ms)
            page.goto(lab["url"])
            # The kernel from the notebook's metadata is started and idle.
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=ms)
            status = page.locator(".jp-StatusBar-Item", has_text=re.compile(r"\|\s*Idle"))
            status.first.wait_for(timeout=ms)
            # Run both cells: select the first, then Shift+Enter twice. A run sent while the
            # page is still connecting to the kernel is dropped by the frontend (the prompt stays
            # `[ ]`), so until the first cell has a count, try again.
            prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
            for attempt in range(10):
                page.locator(".jp-Notebook .jp-Cell").first.click()
                page.keyboard.press("Escape")
                page.keyboard.press("Shift+Enter")
                page.keyboard.press("Shift+Enter")
                try:
                    playwright_sync.expect(prompt).to_have_text(re.compile(r"\[[0-9*]+\]"), timeout=15000)
                    break
                except AssertionError:
                    continue

            slider = page.locator(".jp-Notebook .widget-slider").first
            slider.wait_for(state="visible", timeout=ms)
            output = page.locator(".jp-Notebook .widget-output").first
            playwright_sync.expect(output).to_contain_text("value is 3", timeout=ms)
            shot = lab["shots"] / "slider-3.png"
            slider.screenshot(path=str(shot))
            ok, stats = not_blank(shot)
            assert ok, ("the slider's screenshot is blank", stats)

            # Move the slider with the keyboard: the handle takes focus, → steps by one.
            handle = page.locator(".jp-Notebook .widget-slider .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            handle.press("ArrowRight")
            playwright_sync.expect(output).to_contain_text("value is 5", timeout=ms)
            assert "value is 3" not in output.inner_text()
            readout = page.locator(".jp-Notebook .widget-slider .widget-readout").first
            assert readout.inner_text().strip() == "5"
            shot = lab["shots"] / "slider-5.png"
            page.locator(".jp-Notebook .widget-interact").first.screenshot(path=str(shot))
            ok, stats = not_blank(shot)
            assert ok, ("the interact's screenshot is blank", stats)

            # The tqdm.notebook bar: description, a progress bar filled to the end, the counter.
            bar = page.locator(".jp-Notebook .widget-hprogress").first
            bar.wait_for(state="visible", timeout=ms)
            box = page.locator(".jp-Notebook .widget-hbox", has_text="spindle-bar").first
            playwright_sync.expect(box).to_contain_text("5/5", timeout=ms)
            shot = lab["shots"] / "tqdm.png"
            box.screenshot(path=str(shot))
            ok, stats = not_blank(shot)
            assert ok, ("the progress bar's screenshot is blank", stats)
            # A finished bar is green (bar_style 'success').
            assert has_hue(shot, 1) > 50, "no filled (green) progress bar in the screenshot"
            page.screenshot(path=str(lab["shots"] / "page.png"), full_page=True)
        finally:
            try:
                page.screenshot(path=str(lab["shots"] / "last.png"), full_page=True)
            except Exception:
                pass
            browser.close()
