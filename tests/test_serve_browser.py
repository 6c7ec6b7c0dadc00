"""The page of ``spiritlm serve`` in a real browser: headless Chromium (Debian's ``chromium``,
installed by scripts/setup_env.sh) driven by Playwright, against a server on a tiny model.

The browser is required: in CI (``CI`` set) a missing browser or Playwright fails the test.
Set ``SPIRITLM_SCREENSHOT=path.png`` to save the page after the answer (docs/serve.png).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import soundfile as sf

from fixtures import tiny_serve_stack
from spiritlm.serve.app import background_server
from spiritlm.serve.config import ServeLimits
from spiritlm.serve.engine import Engine

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # a fake microphone


def _browser_or_fail():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    problem = None
    if sync_playwright is None:
        problem = "the playwright package is missing (pip install -e '.[dev]')"
    elif not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: scripts/setup_env.sh installs Debian's chromium (apt-get install chromium)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    stack = tiny_serve_stack(tmp_path_factory.mktemp("browser"))
    engine = Engine.load(str(stack["model"]), vocoder=str(stack["vocoder"]), speech_tokenizer=str(stack["speech_tokenizer"]),
                         limits=ServeLimits(max_queue=1, max_new_tokens=120))
    with background_server(engine) as url:
        yield engine, url, stack


def test_page_streams_speech_that_plays_before_the_answer_is_done_and_downloads_what_generate_says(served, tmp_path):
    sync_playwright = _browser_or_fail()
    engine, url, stack = served
    prompt = tmp_path / "prompt.wav"
    t = np.arange(16000) / 16000
    sf.write(prompt, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)

    # After the first audio chunk went out, the run waits until the page has played a chunk to
    # its end: audio playing before the model finished is then a fact, not a race.
    release = threading.Event()
    held = []

    def hold(state):
        if state.audio_chunks >= 1 and not release.is_set():
            held.append(state.tokens)
            release.wait(timeout=60)

    engine.on_piece = hold
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 820})
            page.goto(url)
            page.wait_for_function("window.spiritlmPage.info !== null")
            loaded = page.inner_text("#loaded")
            assert str(stack["model"]) in loaded and str(stack["vocoder"]) in loaded and str(stack["speech_tokenizer"]) in loaded

            page.set_input_files("#audio-file", str(prompt))
            page.select_option("#modality", "speech")
            page.click("summary:has-text('sampling')")
            for field, value in (("#max-new-tokens", "60"), ("#min-new-tokens", "60"), ("#seed", "3")):
                page.fill(field, value)
            page.click("#generate")
            page.wait_for_function("window.spiritlmPage.chunksEnded >= 1", timeout=60_000)
            state = page.evaluate("window.spiritlmPage")
            assert not state["done"] and held, "the page played a chunk while the model was held mid-answer"
            release.set()
            page.wait_for_function("window.spiritlmPage.done || window.spiritlmPage.error", timeout=60_000)
            state = page.evaluate("window.spiritlmPage")
            assert state["error"] is None and state["done"]
            assert state["endedAtDone"] >= 1 and state["chunksReceived"] >= 1 and held[0] < 60
            tokens = page.inner_text("#out-tokens")
            assert tokens.startswith("[Hu") and tokens.count("[Hu") == 60

            with page.expect_download() as download:
                page.click("#download")
            streamed, rate = sf.read(download.value.path(), dtype="float32")
            if os.environ.get("SPIRITLM_SCREENSHOT"):
                page.screenshot(path=os.environ["SPIRITLM_SCREENSHOT"], full_page=True)

            # an error shows on the page, and the next request is served
            page.set_input_files("#audio-file", [])
            page.fill("#text", "")
            page.click("#generate")
            page.wait_for_function("window.spiritlmPage.error !== null && !window.spiritlmPage.running")
            assert "empty prompt" in page.inner_text("#error") and page.is_visible("#error")

            # the microphone path: Chromium's fake device, MediaRecorder, decoded to a 16 kHz WAV
            page.click("#record")
            page.wait_for_function("document.getElementById('record').classList.contains('on')")
            page.wait_for_timeout(600)
            page.click("#record")
            page.wait_for_function("document.getElementById('audio-status').textContent.includes('recording')")
            page.select_option("#modality", "text")
            page.click("#generate")
            page.wait_for_function("(window.spiritlmPage.done || window.spiritlmPage.error) && !window.spiritlmPage.running")
            state = page.evaluate("window.spiritlmPage")
            assert state["error"] is None and state["done"]
            assert page.text_content("#out-prompt").startswith("[Speech][Hu")
            browser.close()
    finally:
        engine.on_piece = None
        release.set()

    # the WAV the page offers is the non-streamed answer: SpiritLM.generate + the vocoder
    speech_in = engine.speech_tokenizer.encode_string(str(prompt))
    out = engine.lm.generate_with_details([("speech", speech_in)], output_modality="speech", max_new_tokens=60,
                                         min_new_tokens=60, seed=3)
    reference = np.concatenate([np.asarray(o.content, dtype=np.float32) for o in out["outputs"]])
    assert rate == 16000 and streamed.shape == reference.shape
    assert np.abs(streamed - reference).max() <= 1e-4
    assert out["outputs"][0].tokens == tokens

