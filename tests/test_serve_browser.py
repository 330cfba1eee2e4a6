"""The page at ``GET /`` of ``inpctl serve`` in a real browser: headless Chromium (Debian's package)
driven by selenium through /usr/bin/chromedriver.

What the page shows: the server's decisions (the slider a marked what-if), cards in upload order,
each titled by the name uploaded (a dropped folder's files with their folders, which the server then
uses to choose the category), the image beside its overlay, and one file picker. A folder is
dropped as a person drops one: through Chromium's own drag-and-drop (DevTools
``Input.dispatchDragEvent`` with the folder's path), not a script that fakes the event.

Chromium is installed here with apt-get when missing and we are root; otherwise the test is
skipped, saying why. Nothing is fetched by the browser but the page of the local server.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")

from tests.test_serve import Server, model_files, read  # noqa: E402,F401 - model_files is a fixture

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's headless Chromium and its driver, installed with apt-get when missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver): "
                        "missing, and we are not root with apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for command in (["apt-get", "update", "-qq"],
                            ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300",
                             "chromium", "chromium-driver"]):
                subprocess.run(command, env=env, check=True, capture_output=True, timeout=1200)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"could not install chromium with apt-get: {exc}")
        if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
            pytest.skip("apt-get ran but /usr/bin/chromium or /usr/bin/chromedriver is still missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def served(model_files, tmp_path_factory):
    ckpt, inputs = model_files
    # fp32: scores equal whatever batch an image shares (bf16 kernels vary with the batch size)
    srv = Server(ckpt, tmp_path_factory.mktemp("browser-server") / "server.log", "--precision", "fp32")
    yield srv, inputs
    assert srv.stop() == 0


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(chromium)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_upload_shows_the_server_decisions_and_the_slider_is_a_marked_trial(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    srv, inputs = served
    files = sorted(inputs.glob("bottle_*.png"))  # 2 good, 2 defect
    api = {p["filename"]: p for p in httpx.post(srv.url + "/predict", files=[("files", read(f)) for f in files],
                                                timeout=60).json()["predictions"]}

    browser.get(srv.url + "/")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#category option")) == 3, what="the model info")
    assert "encoder small" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".score[data-score]")) == len(files),
             what="the scores")
    wait_for(lambda: all(img.get_property("naturalWidth") > 0
                         for img in browser.find_elements(By.CSS_SELECTOR, "img.overlay")), what="the overlays")
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000

    cards = {card.find_element(By.CSS_SELECTOR, ".name").text: card
             for card in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert set(cards) == {f.name for f in files}
    def server_decisions_shown() -> None:
        """Every card shows the server's score, label, threshold and category as given, no trial."""
        for name, card in cards.items():
            shown = card.find_element(By.CSS_SELECTOR, ".score")
            assert float(shown.get_attribute("data-score")) == api[name]["score"]         # the API's, exactly
            assert float(shown.text) == pytest.approx(api[name]["score"], rel=1e-5)       # 6 digits shown
            badge = card.find_element(By.CSS_SELECTOR, ".badge").text
            assert badge == ("ANOMALOUS" if api[name]["label"] == 1 else "normal")
            threshold = card.find_element(By.CSS_SELECTOR, ".threshold")
            assert float(threshold.get_attribute("data-threshold")) == api[name]["threshold"]   # as given
            assert float(threshold.text.split()[0]) == pytest.approx(api[name]["threshold"], rel=1e-5)
            if api[name].get("threshold_source"):
                assert api[name]["threshold_source"] in threshold.text
            category = card.find_element(By.CSS_SELECTOR, ".category").text
            assert category.split()[0] == (api[name]["category"] or "\u2014")
            assert "trial" not in card.get_attribute("class").split()
            assert not card.find_element(By.CSS_SELECTOR, ".trial-note").is_displayed()
        assert not browser.find_element(By.ID, "trial-banner").is_displayed()
        assert "TRIAL" not in browser.find_element(By.ID, "summary").text

    # the page decides nothing: the cards hold the server's answers as given
    server_decisions_shown()
    assert browser.find_element(By.ID, "reset").get_attribute("disabled") is not None
    first = browser.find_element(By.CSS_SELECTOR, "#category option")
    assert first.text == "automatic" and first.get_attribute("value") == ""   # sends no category

    # the slider is a what-if: just below one image's score it is anomalous, at the score (typed,
    # exact) too, since score >= threshold, just above it normal; every card is marked as a trial
    name, score = files[0].name, api[files[0].name]["score"]
    slide = ("const s = document.getElementById('threshold'); s.value = arguments[0];"
             "s.dispatchEvent(new Event('input'));")
    typed = ("const t = document.getElementById('threshold-value'); t.value = String(arguments[0]);"
             "t.dispatchEvent(new Event('input'));")
    for script, value, expected in ((slide, score * 0.999, "ANOMALOUS"), (typed, score, "ANOMALOUS"),
                                    (slide, score * 1.001, "normal")):
        browser.execute_script(script, value)
        trial = float(browser.find_element(By.ID, "threshold-value").get_property("value"))
        assert trial == (value if script is typed else pytest.approx(value, rel=1e-5))   # the threshold used
        card = cards[name]
        assert card.find_element(By.CSS_SELECTOR, ".badge").text == expected
        assert "trial" in card.get_attribute("class").split()
        note = card.find_element(By.CSS_SELECTOR, ".trial-note")
        assert note.is_displayed() and "trial threshold" in note.text
        assert ("ANOMALOUS" if api[name]["label"] == 1 else "normal") in note.text   # the server's, beside it
        assert browser.find_element(By.ID, "trial-banner").is_displayed()
        assert "TRIAL" in browser.find_element(By.ID, "summary").text
        assert browser.find_element(By.ID, "reset").get_attribute("disabled") is None
    browser.save_screenshot(str(tmp_path / "page-after-slider.png"))

    # back to the server's decisions
    browser.find_element(By.ID, "reset").click()
    server_decisions_shown()
    assert browser.find_element(By.ID, "threshold-value").get_property("value") == ""


def _pick(browser, files: list[Path]) -> None:
    """Choose ``files`` in the page's file picker, in this order (as a person picks them)."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))


def _scored(browser, count: int) -> None:
    from selenium.webdriver.common.by import By

    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".score[data-score]")) == count, what="the scores")
    wait_for(lambda: all(img.get_property("naturalWidth") > 0
                         for img in browser.find_elements(By.CSS_SELECTOR, "img.overlay, img.original")),
             what="the images and overlays")


def _names(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [card.find_element(By.CSS_SELECTOR, ".name").text for card in browser.find_elements(By.CSS_SELECTOR, ".card")]


def _open_page(browser, srv) -> None:
    from selenium.webdriver.common.by import By

    browser.get(srv.url + "/")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#category option")) == 3, what="the model info")


def test_cards_follow_the_upload_order_and_show_the_image_beside_its_overlay(served, browser):
    from selenium.webdriver.common.by import By

    srv, inputs = served
    # not in name order, so that neither a reversed nor a sorted list passes
    files = [inputs / n for n in ("cable_good_001.png", "bottle_defect_000.png", "cable_defect_001.png",
                                  "bottle_good_000.png")]
    _open_page(browser, srv)
    _pick(browser, files[:3])
    _scored(browser, 3)
    _pick(browser, files[3:])   # a second pick comes after the first
    _scored(browser, 4)
    assert _names(browser) == [f.name for f in files]

    for card, path in zip(browser.find_elements(By.CSS_SELECTOR, ".card"), files):
        original = card.find_element(By.CSS_SELECTOR, "img.original")
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        # the image itself, from the browser's copy of the file, at its own size
        assert original.get_attribute("src").startswith("blob:")
        assert original.get_property("naturalWidth") == Image.open(path).width
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        # beside it: the same row, the image on the left
        left, right = original.rect, overlay.rect
        assert abs(left["y"] - right["y"]) < 1 and left["x"] + left["width"] <= right["x"] + 1
        assert left["width"] > 50 and abs(left["width"] - right["width"]) < 2


def test_the_page_has_one_file_picker(served, browser):
    from selenium.webdriver.common.by import By

    srv, _ = served
    _open_page(browser, srv)
    inputs = browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
    assert len(inputs) == 1 and not inputs[0].is_displayed()   # no bare "Choose files" control beside ours
    openers = [el for el in browser.find_elements(By.CSS_SELECTOR, "button, label[for=files], a")
               if el.is_displayed() and "pick" in el.text.lower()]
    assert [el.get_attribute("id") for el in openers] == ["pick"]
    # the button opens that input's dialog (the dialog itself is stopped here: no person to close it)
    browser.execute_script("window.opened = 0; document.getElementById('files').addEventListener('click', "
                           "(e) => { e.preventDefault(); window.opened++; });")
    browser.find_element(By.ID, "pick").click()
    assert browser.execute_script("return window.opened") == 1


def _drop(browser, paths: list[Path]) -> None:
    """Drop files or folders on the page's drop zone through Chromium's own drag-and-drop."""
    from selenium.webdriver.common.by import By

    zone = browser.find_element(By.ID, "drop")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", zone)
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.x, r.y, r.width, r.height];",
                                 zone)
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        browser.execute_cdp_cmd("Input.dispatchDragEvent", {"type": kind, "x": box[0] + box[2] / 2,
                                                            "y": box[1] + box[3] / 2, "data": data})


def test_a_dropped_folder_keeps_its_folders_and_the_server_chooses_the_category_from_them(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    srv, inputs = served
    # four different images, all named 000.png, in category folders; a text file the page skips
    tree = tmp_path / "batch"
    expected = []
    for category in ("bottle", "cable"):
        for kind in ("defect", "good"):
            target = tree / category / kind / "000.png"
            target.parent.mkdir(parents=True)
            shutil.copy(inputs / f"{category}_{kind}_000.png", target)
            expected.append(f"batch/{category}/{kind}/000.png")
    (tree / "bottle" / "notes.txt").write_text("not an image")
    api = {p["filename"]: p for p in httpx.post(
        srv.url + "/predict", files=[("files", (name, (tmp_path / name).read_bytes())) for name in expected],
        timeout=60).json()["predictions"]}
    assert {p["category_source"] for p in api.values()} == {"path"}   # what the folder names make the server do

    _open_page(browser, srv)
    _pick(browser, [inputs / "cable_good_001.png"])   # picked first: its card stays first
    _scored(browser, 1)
    _drop(browser, [tree])
    _scored(browser, 5)
    assert _names(browser) == ["cable_good_001.png", *expected]   # the drop's files in name order
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")[1:]
    for card, name in zip(cards, expected):
        assert card.find_element(By.CSS_SELECTOR, ".category").text == f"{api[name]['category']} (path)"
        # the page's request may batch the images differently from ours: fp32 scores then differ in the last bit
        shown = float(card.find_element(By.CSS_SELECTOR, ".score").get_attribute("data-score"))
        assert shown == pytest.approx(api[name]["score"], rel=1e-6)
    assert "1 file(s) in dropped folders skipped" in browser.find_element(By.ID, "summary").text
