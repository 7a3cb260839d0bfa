"""The demo page in a real headless browser: Debian's chromium driven by selenium, ``ultra-demo`` as a process.

Without chromium and its driver this test fails (it is not skipped): ``sh tests/install_chromium.sh``.
``ULTRA_DEMO_CHECKPOINT`` and ``ULTRA_DEMO_PHOTO`` replace the tiny checkpoint and the generated photo, and
``ULTRA_DEMO_SCREENSHOT`` names a file to keep the screenshot in (the README's picture was taken so).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, save_png
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs the 'demo' extra")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (extra 'dev')")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 120


def browser_paths() -> tuple[str, str]:
    """chromium and chromedriver, or a failure that says how to install them."""
    chromium = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else None)
    if not chromium or not driver:
        pytest.fail(
            "the browser test needs chromium and chromedriver: sh tests/install_chromium.sh "
            "(apt-get install -y --no-install-recommends chromium chromium-driver)"
        )
    return chromium, driver


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """``ultra-demo`` serving the checkpoint on a free port, as a user starts it."""
    port = free_port()
    checkpoint = os.environ.get("ULTRA_DEMO_CHECKPOINT", str(tiny_checkpoint))
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "ultra-demo"), "--checkpoint", checkpoint, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(WAIT_S * 4):
            if process.poll() is not None:
                pytest.fail(f"ultra-demo exited with {process.returncode}: {log.read_text()}")
            if "serving" in log.read_text():
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"ultra-demo did not start in {WAIT_S} s: {log.read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = browser_paths()
    os.environ["SE_AVOID_STATS"] = "true"  # selenium never looks for a download
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root inside its sandbox
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except Exception as err:  # noqa: BLE001 - a browser that cannot start fails the test, with why
        pytest.fail(f"chromium could not start: {err}")
    yield driver
    driver.quit()


@pytest.fixture
def photo(tmp_path) -> Path:
    if "ULTRA_DEMO_PHOTO" in os.environ:
        return Path(os.environ["ULTRA_DEMO_PHOTO"])
    picture = np.zeros((180, 240, 3), np.uint8)
    picture[:] = (30, 60, 190)
    picture[40:140, 90:200] = (220, 40, 30)
    return save_png(tmp_path / "photo.png", picture)


def fetch(url: str) -> np.ndarray:
    """An image the page shows, as its pixels (gradio serves it under its own URL)."""
    with urllib.request.urlopen(url) as response:
        return np.array(Image.open(io.BytesIO(response.read())).convert("RGB"))


def shown_image(driver, elem_id: str) -> np.ndarray:
    """Wait for the image of component ``elem_id`` and return its pixels."""
    image = WebDriverWait(driver, WAIT_S).until(
        ready.visibility_of_element_located((By.CSS_SELECTOR, f"#{elem_id} img"))
    )
    return fetch(image.get_attribute("src"))


def text_of(driver, elem_id: str, contains: str) -> str:
    WebDriverWait(driver, WAIT_S).until(ready.text_to_be_present_in_element((By.ID, elem_id), contains))
    return driver.find_element(By.ID, elem_id).text


def upload(driver, path: Path) -> None:
    field = WebDriverWait(driver, WAIT_S).until(
        ready.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]"))
    )
    field.send_keys(str(path))


def open_tab(driver, name: str) -> None:
    tab = WebDriverWait(driver, WAIT_S).until(
        ready.element_to_be_clickable((By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']"))
    )
    tab.click()


def test_segment_and_select_in_a_real_browser(server, browser, photo, tmp_path):
    browser.get(server)
    upload(browser, photo)
    WebDriverWait(browser, WAIT_S).until(ready.element_to_be_clickable((By.ID, "segment-button"))).click()
    status = text_of(browser, "segment-status", "segmented by the")
    overlay = shown_image(browser, "segment-overlay")
    original = np.array(Image.open(photo).convert("RGB"))
    assert overlay.shape == original.shape, status
    assert np.abs(overlay.astype(int) - original).mean() > 10  # the segments are drawn over the photo
    legend = browser.find_element(By.ID, "segment-legend").text
    assert "%" in legend, legend
    browser.save_screenshot(str(tmp_path / "segment.png"))
    if "ULTRA_DEMO_SCREENSHOT" in os.environ:  # kept small: down to the status line, in 64 colours
        end = browser.find_element(By.ID, "segment-status")
        shot = Image.open(tmp_path / "segment.png").convert("RGB")
        shot = shot.crop((0, 0, shot.width, min(shot.height, end.location["y"] + end.size["height"] + 16)))
        shot.quantize(64).save(os.environ["ULTRA_DEMO_SCREENSHOT"], optimize=True)

    open_tab(browser, "Select")
    picture = WebDriverWait(browser, WAIT_S).until(
        ready.visibility_of_element_located((By.CSS_SELECTOR, "#select-photo img"))
    )
    # a click at 60% across and 50% down the shown photo (inside the red square of the generated one)
    ActionChains(browser).move_to_element_with_offset(picture, int(0.1 * picture.size["width"]), 0).click().perform()
    status = text_of(browser, "select-status", "% of the photo")
    mask = shown_image(browser, "select-mask")[..., 0]
    x, y = (int(v) for v in status.split("object at (")[1].split(")")[0].split(", "))
    assert mask.shape == original.shape[:2] and mask[y, x] == 255, status
    assert abs(x - 0.6 * original.shape[1]) <= 2 and abs(y - 0.5 * original.shape[0]) <= 2, status
    assert 0 < (mask == 255).mean() < 1
    browser.save_screenshot(str(tmp_path / "select.png"))

    open_tab(browser, "Look inside")
    WebDriverWait(browser, WAIT_S).until(ready.element_to_be_clickable((By.ID, "look-button"))).click()
    status = text_of(browser, "look-status", "eigenvectors")
    assert "eigenvectors 1-3 as RGB; click on the photo for a token's relevance" in status  # no click yet
    pictures = browser.find_elements(By.CSS_SELECTOR, "#tab-look img")
    assert len(pictures) >= 4  # the photo and the kq, vv and feat eigenvectors
    browser.save_screenshot(str(tmp_path / "look.png"))


def test_a_corrupt_upload_is_a_message_in_the_page(server, browser, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    browser.get(server)
    upload(browser, bad)
    assert "cannot read photo broken.jpg" in text_of(browser, "segment-status", "cannot read photo")
    WebDriverWait(browser, WAIT_S).until(ready.element_to_be_clickable((By.ID, "segment-button"))).click()
    assert "broken.jpg" in text_of(browser, "segment-status", "Error")
