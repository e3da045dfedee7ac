"""Retake the README's screenshots of the demo with the shipped models: ``python tools/screenshots.py``.

Starts the demo on the models in assets/ (on a free localhost port), opens it in Debian's headless Chromium
through Selenium, runs a real generation (the DMD2 student beside the teacher) and a real text-to-3D run,
and saves ``generate.png`` and ``text_to_3d.png`` once the images and the 3D view are on the page. Needs
``apt-get install chromium chromium-driver`` and ``pip install -e '.[demo,dev]'``. The text-to-3D run takes
minutes on a CPU (600 iterations took 13 minutes on 2 cores shared with other jobs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-unsafe-swiftshader")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the two PNGs")
    p.add_argument("--prompt", default="a red cube, front view", help="prompt of the generation tab")
    p.add_argument("--prompt-3d", default="a red cube", help="prompt of the text-to-3D tab")
    p.add_argument("--method", default="sds", choices=("sds", "vsd", "csd", "npg"), help="text-to-3D method")
    p.add_argument("--iterations", type=int, default=600, help="text-to-3D iterations (the preset's: 600)")
    p.add_argument("--size", default="1440,1200", help="browser window width,height in pixels")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_browser(args):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in (*FLAGS, f"--window-size={args.size}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=args.chromedriver), options=options)
    driver.set_page_load_timeout(120)
    return driver


def type_into(driver, selector: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, f"{selector} textarea, {selector} input")
    box.clear()
    box.send_keys(text)


def wait(driver, condition, timeout: float, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise SystemExit(f"error: {what} did not happen within {timeout:g} s") from None


def images_loaded(driver, selector: str, count: int) -> bool:
    """At least ``count`` images under ``selector``, every one fully decoded."""
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, f"{selector} img")
    return len(images) >= count and all(driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", im) for im in images)


def no_spinners(driver) -> bool:
    """No output of the page still shows gradio's progress overlay."""
    return not driver.execute_script(
        "return [...document.querySelectorAll('.wrap')].some(w => w.offsetParent && "
        "(w.classList.contains('generating') || w.classList.contains('pending') || "
        "w.querySelector('.eta-bar, .progress-text')))")


def shoot_generation(driver, args, out: Path) -> None:
    from selenium.webdriver.common.by import By

    type_into(driver, "#gen-prompt", args.prompt)
    driver.find_element(By.ID, "gen-run").click()
    for element in ("gen-model-info", "gen-teacher-info"):
        wait(driver, lambda d, e=element: "NFE" in d.find_element(By.ID, e).text, 300, f"#{element} showing NFE")
    wait(driver, lambda d: images_loaded(d, "#gen-teacher", 4) and images_loaded(d, "#gen-model-images", 4), 60,
         "the images loading")
    wait(driver, no_spinners, 60, "the progress overlays going")
    time.sleep(1)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(out / "generate.png"))
    print(f"generate.png: {driver.find_element(By.ID, 'gen-model-info').text!r} | "
          f"{driver.find_element(By.ID, 'gen-teacher-info').text!r}")


def set_iterations(driver, n: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#t3d-iterations input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(n), Keys.TAB)


def shoot_text_to_3d(driver, args, out: Path) -> None:
    from selenium.webdriver.common.by import By

    tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text == "Text to 3D")
    tab.click()
    wait(driver, lambda d: d.find_element(By.ID, "t3d-run").is_displayed(), 30, "the text-to-3D tab opening")
    type_into(driver, "#t3d-prompt", args.prompt_3d)
    next(e for e in driver.find_elements(By.CSS_SELECTOR, "#t3d-method label") if e.text == args.method).click()
    set_iterations(driver, args.iterations)
    driver.find_element(By.ID, "t3d-run").click()
    start = time.monotonic()
    wait(driver, lambda d: "Done" in d.find_element(By.ID, "t3d-status").text, 60 + 3 * args.iterations,
         "the text-to-3D run finishing")
    print(f"text-to-3D: {driver.find_element(By.ID, 't3d-status').text!r} after {time.monotonic() - start:.0f} s")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#t3d-scene canvas"), 60, "the 3D view appearing")
    wait(driver, lambda d: images_loaded(d, "#t3d-turntable", 1) and images_loaded(d, "#t3d-renders", 1), 60,
         "the turntable and renders loading")
    wait(driver, no_spinners, 60, "the progress overlays going")
    time.sleep(8)  # gsplat.js sorts the splats in a worker and fades them in
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(out / "text_to_3d.png"))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    from gendistill.compat import prepare_process

    prepare_process()
    from gendistill.app.demo import DemoOptions, launch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo, url = launch(DemoOptions(port=free_port()), block=False)
    driver = open_browser(args)
    try:
        driver.get(url)
        wait(driver, lambda d: d.find_elements("id", "gen-run"), 120, "the page loading")
        shoot_generation(driver, args, out)
        shoot_text_to_3d(driver, args, out)
    finally:
        driver.quit()
        demo.close()
    print(f"wrote {out / 'generate.png'} and {out / 'text_to_3d.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
