"""A real browser (Debian's chromium via Playwright): rate with the keyboard, run a round as admin, see it live.

Screenshots of every tab land in test-artifacts/ .
"""

import shutil
import time
from pathlib import Path

import pytest

from .studio_fixtures import PASSWORD, launch_studio

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.heavy]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    studio, demo = launch_studio(tmp_path_factory.mktemp("browser-studio"), ab_fraction=0.75)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.goto(demo.local_url)
        pg.wait_for_selector("#btn-left")
        yield pg, studio
        browser.close()
    studio.close()
    demo.close()


def tab(pg, name):
    pg.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def wait_until(fn, timeout=60.0, step=0.25):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return True
        time.sleep(step)
    return False


def test_rate_with_the_keyboard(page):
    pg, studio = page
    pg.fill("#rater-name input, #rater-name textarea", "keyboard-kim")
    pg.locator("#pair-prompt").click()  # focus out of the text box: keys now vote
    assert wait_until(lambda: pg.locator("#img-left img").count() > 0)
    keys = ["1", "2", "1", "3", "1", "2", "1", "1", "2", "1", "2", "1", " "]
    for i, key in enumerate(keys):
        src = pg.locator("#img-left img").get_attribute("src")
        last_prompt = pg.locator("#pair-prompt").inner_text()
        pg.keyboard.press("Space" if key == " " else key)
        assert wait_until(lambda: pg.locator("#img-left img").get_attribute("src") != src, 30), f"vote {i}"
    assert wait_until(lambda: len([r for r in studio.store.comparisons(include_skips=True)
                                   if r["rater"] == "keyboard-kim"]) == len(keys))
    rows = [r for r in studio.store.comparisons(include_skips=True) if r["rater"] == "keyboard-kim"]
    assert sorted(r["choice"] for r in rows) == sorted({"1": "a", "2": "b", "3": "tie", " ": "skip"}[k] for k in keys)
    assert wait_until(lambda: "13" in pg.locator("#rate-counts").inner_text())
    pg.keyboard.press("u")  # undo the skip: that pair is offered again
    assert wait_until(lambda: studio.store.counts()["comparisons"] == len(keys) - 1)
    assert wait_until(lambda: pg.locator("#pair-prompt").inner_text() == last_prompt, 10)
    pg.screenshot(path=str(ARTIFACTS / "tab-rate.png"), full_page=True)


def test_round_as_admin_with_live_progress_and_compare(page):
    pg, studio = page
    pg.fill("#admin-pw input", PASSWORD)
    tab(pg, "Train")
    pg.check("#force-round input")  # 12 labels: the reward model may not beat chance yet; start anyway
    pg.click("#btn-start-round")
    assert wait_until(lambda: "training" in pg.locator("#train-status").inner_text(), 120)
    assert wait_until(lambda: "epoch 1/" in pg.locator("#train-status").inner_text()
                      or "epoch 2/" in pg.locator("#train-status").inner_text(), 180)
    pg.screenshot(path=str(ARTIFACTS / "tab-train-running.png"), full_page=True)
    assert wait_until(lambda: pg.locator("#reward-curve img, #reward-curve canvas, #reward-curve svg").count() > 0, 60)
    assert wait_until(lambda: "done" in pg.locator("#train-status").inner_text(), 600)
    pg.screenshot(path=str(ARTIFACTS / "tab-train-done.png"), full_page=True)
    cand = studio.generator.candidate
    # the refresh timer (1 s) must not reset the version an admin is choosing
    pg.locator("#version-select input").click()
    pg.get_by_role("option", name=cand).click()
    time.sleep(2.5)
    assert pg.locator("#version-select input").input_value() == cand
    assert cand and cand.startswith("round-") and studio.generator.version == "base"  # on trial, not served
    assert wait_until(lambda: "on trial" in pg.locator("#train-status").inner_text(), 10)
    # while the candidate is pending, the Rate tab mixes in A/B pairs: candidate vs served, same prompt and seed
    tab(pg, "Rate")
    pg.locator("#pair-prompt").click()
    for i in range(8):  # ties (key 3): the gate neither promotes nor rejects on 8 ties, so the candidate stays
        src = pg.locator("#img-left img").get_attribute("src")
        pg.keyboard.press("3")
        assert wait_until(lambda: pg.locator("#img-left img").get_attribute("src") != src, 30), f"vote {i}"
    rows = [r for r in studio.store.comparisons() if r["rater"] == "keyboard-kim"]
    ab = [r for r in rows if cand in (r["generator_a"], r["generator_b"])]
    assert ab, "no A/B pair was shown while a candidate was pending"
    for r in ab:
        a, b = studio.store.get_sample(r["sample_a"]), studio.store.get_sample(r["sample_b"])
        assert a["prompt"] == b["prompt"] and a["seed"] == b["seed"]
    # the leaderboard counts those votes
    tab(pg, "Compare")
    pg.click("#btn-compare")
    assert wait_until(lambda: cand in pg.locator("#leaderboard").inner_text(), 60)
    votes = {r["version"]: r["votes"] for r in studio.leaderboard()}
    assert votes[cand] >= len(ab)
    assert wait_until(lambda: pg.locator("#compare-gallery img").count() >= 2 * studio.settings.compare_prompts, 60)
    assert cand in pg.locator("#compare-table").inner_text()
    pg.screenshot(path=str(ARTIFACTS / "tab-compare.png"), full_page=True)
    for name, shot in (("Reward model", "tab-reward-model"), ("Data", "tab-data"), ("Settings", "tab-settings")):
        tab(pg, name)
        pg.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
