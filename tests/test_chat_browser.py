"""The chat page in a real (headless) Chromium: ask, 👍, edit, 👎, another + pick.

Selenium drives Debian's ``chromium`` through ``chromedriver``, both named by
path so Selenium Manager never looks anything up online. Skipped only where
no Chromium (or its driver, or selenium) can be found.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from chat_helpers import read_rows, start_chat, stop_chat, train_briefly

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


CHROMIUM = find("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = find("/usr/bin/chromedriver", "chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium + chromedriver (apt-get install chromium chromium-driver)",
)

# The tiny untrained model can end an answer at once (EOS), and an empty
# answer cannot be judged: the test adds the same logit_bias as chat_helpers
# to the page's requests, and nothing else.
FORBID_EOS = """
const bias = arguments[0], fetch0 = window.fetch;
window.fetch = (url, init) => {
  if (url === "/v1/chat/completions") {
    const body = JSON.parse(init.body); body.logit_bias = bias;
    init = {...init, body: JSON.stringify(body)};
  }
  return fetch0(url, init);
};
"""


@pytest.fixture(scope="module")
def browser(monkeypatch_module):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    # The suite's LD_PRELOAD (OpenBLAS, for MLX) makes Chromium's GPU process
    # fail to start; the browser needs none of it.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    service = Service(CHROMEDRIVER, env=env)
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download
        yield patch


def text_of(driver, element) -> str:
    return driver.execute_script("return arguments[0].textContent", element)


def test_rate_edit_and_pick_in_a_browser_write_exactly_those_rows(
    browser, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))
    chat = start_chat(
        tiny_model, tmp_path / "fb", tmp_path / "log", "--temperature", "1.0"
    )
    try:
        rows = drive_the_page(browser, chat)
    finally:
        stop_chat(chat)
    q1, a1, q2, b1, b2 = rows
    first = [{"role": "user", "content": q1}]
    second = [*first, {"role": "assistant", "content": "Five."},
              {"role": "user", "content": q2}]  # fmt: skip

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    kto, dpo = chat.feedback / "kto.jsonl", chat.feedback / "dpo.jsonl"
    assert read_rows(kto) == [
        {"prompt": first, "completion": said(a1), "label": True},
        {"prompt": second, "completion": said(b1), "label": False},
    ]
    assert read_rows(dpo) == [
        {"prompt": first, "chosen": said("Five."), "rejected": said(a1)},
        {"prompt": second, "chosen": said(b2), "rejected": said(b1)},
    ]
    for stage, data in (("kto", kto), ("dpo", dpo)):
        losses = train_briefly(stage, tiny_model, data, tmp_path / stage)
        assert len(losses) == 2 and all(map(math.isfinite, losses)), stage


def drive_the_page(driver, chat) -> tuple[str, ...]:
    """Q1 -> 👍, edit to "Five."; Q2 -> 👎, another, pick the second. The
    question and answer texts as the page showed them."""
    wait = WebDriverWait(driver, 60)
    driver.get(chat.url + "/")
    driver.execute_script(FORBID_EOS, chat.no_eos)

    def stat(name: str, value: str) -> None:
        wait.until(lambda d: d.find_element(By.ID, f"stat-{name}").text == value)

    def ask(question: str):
        driver.find_element(By.ID, "prompt").send_keys(question)
        driver.find_element(By.ID, "send").click()
        turn = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".turn")[-1])
        wait.until(lambda d: turn.find_elements(By.CSS_SELECTOR, ".answer .up"))
        return turn, text_of(
            driver, turn.find_element(By.CSS_SELECTOR, ".answer .text")
        )

    q1, q2 = "What is 2 + 3?", "And 3 + 4?"
    turn, a1 = ask(q1)
    turn.find_element(By.CSS_SELECTOR, ".up").click()
    stat("ratings", "1")
    turn.find_element(By.CSS_SELECTOR, ".edit").click()
    box = turn.find_element(By.CSS_SELECTOR, "textarea.edit-box")
    box.clear()
    box.send_keys("Five.")
    turn.find_element(By.CSS_SELECTOR, ".save-edit").click()
    stat("pairs", "1")

    turn, b1 = ask(q2)
    turn.find_element(By.CSS_SELECTOR, ".down").click()
    stat("ratings", "2")
    turn.find_element(By.CSS_SELECTOR, ".another").click()
    wait.until(lambda d: len(turn.find_elements(By.CSS_SELECTOR, ".pick")) == 2)
    picks = turn.find_elements(By.CSS_SELECTOR, ".pick")
    b2 = text_of(driver, turn.find_elements(By.CSS_SELECTOR, ".answer .text")[1])
    picks[1].click()
    stat("pairs", "2")
    assert driver.find_element(By.ID, "stat-good").text == "1"
    assert "dpo.jsonl" in driver.find_element(By.ID, "train-dpo").text
    return q1, a1, q2, b1, b2
