"""The demo in a real headless Chromium: type a prompt, press the button, find the results in the page.

Needs Debian's ``chromium`` and ``chromium-driver`` and pip's ``selenium``; skipped (with the install lines) when
they are missing. The server is conftest's, of two tiny random pipelines; the text-to-3D tests use its stand-in
runs ("quick ...", "slow ..."), as the real run is covered through the API. The README's screenshots come from
``python tools/screenshots.py`` (the shipped models, real runs).
"""

from __future__ import annotations

import shutil

import pytest

NEEDS_GRADIO = "the demo tests need gradio and gradio_client: pip install -e '.[demo]'"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NEEDS_BROWSER = ("needs a headless browser: apt-get install -y chromium chromium-driver && pip install selenium "
                 f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER})")

pytest.importorskip("gradio", reason=NEEDS_GRADIO)
webdriver = pytest.importorskip("selenium.webdriver", reason=NEEDS_BROWSER)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(NEEDS_BROWSER, allow_module_level=True)

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1440,1250", "--enable-unsafe-swiftshader")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser, demo_server):
    browser.get(demo_server[0])
    WebDriverWait(browser, 60).until(ec.element_to_be_clickable((By.ID, "gen-run")))
    return browser


def type_into(driver, selector: str, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"{selector} textarea, {selector} input")
    box.clear()
    box.send_keys(text)


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_for_text(driver, element_id: str, text: str, timeout: float) -> None:
    try:
        WebDriverWait(driver, timeout).until(lambda d: text in text_of(d, element_id))
    except TimeoutException:
        raise AssertionError(f"#{element_id} never showed {text!r} in {timeout:g} s; it shows "
                             f"{text_of(driver, element_id)!r}") from None


def test_generate_shows_images_of_both_models(page):
    type_into(page, "#gen-prompt", "a red cube")
    page.find_element(By.ID, "gen-run").click()
    wait_for_text(page, "gen-model-info", "NFE", 120)
    wait_for_text(page, "gen-teacher-info", "NFE", 120)
    model_images = page.find_elements(By.CSS_SELECTOR, "#gen-model-images img")
    teacher_images = page.find_elements(By.CSS_SELECTOR, "#gen-teacher img")
    assert len(model_images) >= 4 and len(teacher_images) >= 4  # 4 images each (a preview may add more)
    assert all(int(img.get_attribute("naturalWidth")) >= 16 for img in model_images + teacher_images)
    assert "per image" in text_of(page, "gen-model-info")


def test_a_bad_prompt_is_answered_in_the_page(page):
    page.find_element(By.ID, "gen-run").click()  # empty prompt
    WebDriverWait(page, 30).until(lambda d: "prompt is empty" in d.find_element(By.TAG_NAME, "body").text)


def open_text_to_3d(page) -> None:
    tab = next(b for b in page.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text == "Text to 3D")
    tab.click()
    WebDriverWait(page, 30).until(ec.element_to_be_clickable((By.ID, "t3d-run")))


def set_iterations(page, n: int) -> None:
    box = page.find_element(By.CSS_SELECTOR, "#t3d-iterations input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(n), Keys.TAB)


def test_text_to_3d_streams_then_shows_the_splats(page):
    open_text_to_3d(page)
    type_into(page, "#t3d-prompt", "quick red cube")  # conftest's stand-in: 3 steps, then a run's files
    set_iterations(page, 3)
    page.find_element(By.ID, "t3d-run").click()
    wait_for_text(page, "t3d-status", "Done", 120)
    assert page.find_elements(By.CSS_SELECTOR, "#t3d-renders img")
    assert page.find_elements(By.CSS_SELECTOR, "#t3d-turntable img")
    WebDriverWait(page, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#t3d-scene canvas"))  # the viewer
    downloads = {a.get_attribute("download") for a in page.find_elements(By.CSS_SELECTOR, "#t3d-files a[download]")}
    assert {"scene.ply", "turntable.gif", "metrics.json"} <= downloads and "viewer-scene.ply" not in downloads


def test_nerf_is_explained_in_the_page(page):
    open_text_to_3d(page)
    note = page.find_element(By.ID, "t3d-representation").text
    if "pip install gendistill[nerf]" not in note:
        pytest.skip("nerfstudio is installed here")
    type_into(page, "#t3d-prompt", "a red cube")
    next(e for e in page.find_elements(By.CSS_SELECTOR, "#t3d-representation label") if e.text == "nerf").click()
    page.find_element(By.ID, "t3d-run").click()
    WebDriverWait(page, 30).until(lambda d: "needs nerfstudio" in d.find_element(By.TAG_NAME, "body").text)


def test_stop_button_ends_a_run(page):
    open_text_to_3d(page)
    type_into(page, "#t3d-prompt", "slow red cube")  # the stand-in runner of conftest.py: runs until stopped
    set_iterations(page, 2000)
    page.find_element(By.ID, "t3d-run").click()
    wait_for_text(page, "t3d-status", "Running", 60)
    page.find_element(By.ID, "t3d-stop").click()
    wait_for_text(page, "t3d-status", "Stopped", 120)


def test_closing_the_page_ends_its_run(page, demo_server):
    runner = demo_server[2]
    open_text_to_3d(page)
    type_into(page, "#t3d-prompt", "slow red cube")
    set_iterations(page, 2000)
    page.find_element(By.ID, "t3d-run").click()
    wait_for_text(page, "t3d-status", "Running", 60)
    assert runner.running == 1
    page.get("about:blank")  # the page goes away without pressing Stop: the run must not hog the queue
    WebDriverWait(page, 40, poll_frequency=0.5).until(lambda _: runner.running == 0)


def test_edit_tab_renders_a_shape_and_shows_before_and_after(page):
    tab = next(b for b in page.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text == "Edit")
    tab.click()
    WebDriverWait(page, 30).until(ec.element_to_be_clickable((By.ID, "edit-use-render"))).click()
    WebDriverWait(page, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-source img"))
    type_into(page, "#edit-prompt", "a blue cube")
    box = page.find_element(By.CSS_SELECTOR, "#edit-iterations input[type='number']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("2", Keys.TAB)
    page.find_element(By.ID, "edit-run").click()
    wait_for_text(page, "edit-status", "Done", 120)
    assert "a red cube" in page.find_element(By.CSS_SELECTOR, "#edit-source-prompt textarea").get_attribute("value")
    for element in ("edit-before-after", "edit-edited", "edit-mask"):
        assert page.find_elements(By.CSS_SELECTOR, f"#{element} img"), element
    downloads = {a.get_attribute("download") for a in page.find_elements(By.CSS_SELECTOR, "#edit-files a[download]")}
    assert {"edited.png", "before_after.png", "mask.png"} <= downloads
