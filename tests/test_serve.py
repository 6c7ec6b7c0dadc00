"""``spiritlm serve``: streamed answers equal non-streamed ones, audio streams while the LM runs,
bad requests get one clear error and the server goes on, one request at a time with a queue."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
import soundfile as sf

from fixtures import tiny_serve_stack
from spiritlm.serve.app import background_server
from spiritlm.serve.config import ServeLimits
from spiritlm.serve.engine import Engine, decode_pcm

LIMITS = ServeLimits(max_queue=1, max_upload_mb=1, max_audio_seconds=20, max_new_tokens=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return tiny_serve_stack(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def engine(stack):
    return Engine.load(str(stack["model"]), vocoder=str(stack["vocoder"]), speech_tokenizer=str(stack["speech_tokenizer"]),
                       limits=LIMITS)


@pytest.fixture(scope="module")
def url(engine):
    with background_server(engine) as base:
        yield base


@pytest.fixture(autouse=True)
def _fresh_hooks(request):
    yield
    if "engine" in request.fixturenames:
        eng = request.getfixturevalue("engine")
        eng.on_piece = None
        eng.scheduler.max_queue = LIMITS.max_queue


def wav_file(seconds: float = 1.0, rate: int = 16000, fmt: str = "WAV", silent: bool = False) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wav = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), rate, format=fmt)
    return buf.getvalue()


def speech_upload():
    return {"audio": ("prompt.wav", wav_file(), "audio/wav")}


def read_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def stream(url, data, files=None) -> tuple[int, list[dict] | dict]:
    with httpx.stream("POST", f"{url}/api/stream", data=data, files=files, timeout=120) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.json()
        return 200, read_events(r)


SPEECH = {"output_modality": "speech", "max_new_tokens": "60", "min_new_tokens": "60", "seed": "3"}


def test_streamed_speech_answer_equals_generate_and_vocoder(url, engine):
    status, events = stream(url, SPEECH, speech_upload())
    assert status == 200, events
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["queued", "prompt"] and kinds[-1] == "done" and "error" not in kinds
    done = events[-1]
    assert events[1]["speech_in"].startswith("[Hu") and done["n_tokens"] == 60
    units = "".join(e["delta"] for e in events if e["type"] == "units")
    audio = np.concatenate([decode_pcm(e["pcm_f32le"]) for e in events if e["type"] == "audio"])
    assert [e["offset"] for e in events if e["type"] == "audio"][0] == 0 and audio.size == done["audio_samples"]

    full = httpx.post(f"{url}/api/generate", data=SPEECH, files=speech_upload(), timeout=120).json()
    ref, rate = sf.read(io.BytesIO(base64.b64decode(full["audio_wav_base64"])), dtype="float32")
    assert rate == 16000 and full["tokens"] == done["tokens"] == [units]
    # the same as the library: SpiritLM.generate with the vocoder, no server in between
    lm_out = engine.lm.generate_with_details([("speech", events[1]["speech_in"])], output_modality="speech",
                                            max_new_tokens=60, min_new_tokens=60, seed=3)
    lib = np.concatenate([np.asarray(o.content, dtype=np.float32) for o in lm_out["outputs"]])
    assert np.array_equal(ref, lib)
    assert audio.shape == ref.shape and np.abs(audio - ref).max() <= 1e-4


def test_streamed_text_answer_equals_generate(url):
    data = {"text": "the cat sat", "output_modality": "text", "max_new_tokens": "30", "seed": "1"}
    status, events = stream(url, data)
    assert status == 200
    deltas = "".join(e["delta"] for e in events if e["type"] == "text")
    full = httpx.post(f"{url}/api/generate", data=data, timeout=60).json()
    assert deltas == events[-1]["text"] == full["text"] and full["text"]
    assert events[-1]["timings"]["first_text_s"] is not None and not any(e["type"] == "audio" for e in events)


def test_json_api_takes_base64_audio_and_a_speaker(url):
    body = {"audio_base64": base64.b64encode(wav_file()).decode(), "output_modality": "speech", "max_new_tokens": 20,
            "min_new_tokens": 20, "do_sample": False}
    alice = httpx.post(f"{url}/api/generate", json={**body, "speaker": "alice"}, timeout=60).json()
    bob = httpx.post(f"{url}/api/generate", json={**body, "speaker": "1"}, timeout=60).json()
    assert alice["tokens"] == bob["tokens"] and alice["audio_wav_base64"] != bob["audio_wav_base64"]


def test_audio_is_sent_while_the_model_is_still_generating(url, engine):
    seen: list[tuple[int, int]] = []
    engine.on_piece = lambda state: seen.append((state.tokens, state.audio_chunks))
    status, events = stream(url, SPEECH, speech_upload())
    assert status == 200 and events[-1]["type"] == "done"
    first_audio = next(tokens for tokens, chunks in seen if chunks > 0)
    assert first_audio < 60  # the vocoder's first chunk went out before the 60th token was generated
    kinds = [e["type"] for e in events]
    assert kinds.index("audio") < max(i for i, k in enumerate(kinds) if k == "units")


def test_the_page_names_what_is_loaded(url, stack):
    page = httpx.get(url).text
    assert "<title>spiritlm serve</title>" in page and "api/stream" in page
    info = httpx.get(f"{url}/api/info").json()
    assert info["model"]["path"] == str(stack["model"]) and info["vocoder"]["speakers"] == ["alice", "bob"]
    assert info["speech_tokenizer"]["path"] == str(stack["speech_tokenizer"]) and info["speech_tokenizer"]["num_units"]["hubert"] == 6
    assert info["limits"]["max_new_tokens"] == 120


TEN_MINUTES = wav_file(600, fmt="FLAC", silent=True)  # silence compresses: small upload, long audio

BAD = {
    "non-audio upload": ({"output_modality": "text"}, {"audio": ("notes.txt", b"these are not samples " * 50, "text/plain")},
                         415, "audio 'notes.txt': not an audio file (upload a WAV or FLAC)"),
    "10-minute upload": ({"output_modality": "speech"}, {"audio": ("long.flac", TEN_MINUTES, "audio/flac")},
                         413, "audio 'long.flac': 600.0 s, longer than this server's 20 s (spiritlm serve --max_audio_seconds)"),
    "upload over the size limit": ({}, {"audio": ("big.wav", wav_file(40), "audio/wav")}, 413, "larger than this server's 1 MiB"),
    "empty prompt": ({"text": "   ", "output_modality": "text"}, None, 400, "empty prompt"),
    "unit ids the tokenizer lacks": ({"speech": "[Hu3][Hu9999]"}, None, 400,
                                     "speech: speech token [Hu9999] is not in the vocabulary of the loaded model"),
    "malformed tokens": ({"speech": "[Hu3][Hu"}, None, 400, "speech:"),
    "oversized max_new_tokens": ({"text": "hi", "max_new_tokens": "100000"}, None, 400,
                                 "max_new_tokens 100000: this server allows at most 120 (spiritlm serve --max_new_tokens)"),
    "unknown speaker": ({"text": "hi", "output_modality": "speech", "speaker": "carol"}, None, 400,
                        "unknown speaker 'carol'; known: alice, bob (speaker)"),
    "not a number": ({"text": "hi", "top_p": "lots"}, None, 400, "top_p 'lots': must be a number"),
    "bad sampling": ({"text": "hi", "top_p": "1.5"}, None, 400, "top_p must be in (0, 1], got 1.5 (top_p)"),
    "unknown field": ({"text": "hi", "temprature": "0.5"}, None, 400, "unknown field 'temprature'"),
    "unknown modality": ({"text": "hi", "output_modality": "video"}, None, 400, "output_modality 'video'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_clear_error_and_the_server_goes_on(url, case):
    data, files, status, message = BAD[case]
    for route in ("generate", "stream"):
        r = httpx.post(f"{url}/api/{route}", data=data, files=files, timeout=60)
        assert r.status_code == status, (route, r.text)
        body = r.json()
        assert message in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    ok = httpx.post(f"{url}/api/generate", data={"text": "the", "max_new_tokens": "3"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["n_tokens"] >= 1


def test_a_body_that_is_not_a_form_or_json(url):
    r = httpx.post(f"{url}/api/generate", content=b"text=hi", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data or application/json" in r.json()["error"]
    r = httpx.post(f"{url}/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_a_client_that_disconnects_mid_stream_stops_its_run(url, engine):
    before = httpx.get(f"{url}/api/info").json()["stats"]["cancelled"]
    reached = threading.Event()

    def hold(state):  # park the run after 3 tokens until the server notices the client left
        if state.tokens == 3:
            reached.set()
            state.cancel.wait(timeout=60)

    engine.on_piece = hold
    with httpx.stream("POST", f"{url}/api/stream", data={**SPEECH, "max_new_tokens": "120", "min_new_tokens": "120"},
                      files=speech_upload(), timeout=60) as r:
        lines = r.iter_lines()  # held: a dropped iterator would close the response here already
        for line in lines:
            if line.startswith("event: units"):
                break
        assert reached.wait(timeout=60) and not engine.stats["cancelled"] > before
    # the response is closed: the run must end with "cancelled", not run to its 120 tokens
    for _ in range(600):
        stats = httpx.get(f"{url}/api/info").json()["stats"]
        if stats["cancelled"] > before and stats["pending"] == 0:
            break
        threading.Event().wait(0.05)
    assert stats["cancelled"] == before + 1
    engine.on_piece = None
    status, events = stream(url, {"text": "the cat", "max_new_tokens": "5"})
    assert status == 200 and events[-1]["type"] == "done"


def test_two_clients_at_once_one_runs_one_waits_the_next_is_told_busy(url, engine):
    running, release = threading.Event(), threading.Event()

    def hold(state):
        if state.tokens == 2:
            running.set()
            release.wait(timeout=60)

    engine.on_piece = hold
    results: dict[str, tuple] = {}

    def client(name, data):
        results[name] = stream(url, data)

    first = threading.Thread(target=client, args=("first", {"text": "the cat", "max_new_tokens": "8", "min_new_tokens": "8"}))
    first.start()
    assert running.wait(timeout=60)
    engine.scheduler.max_queue = 0  # nobody may wait: a second client is told "busy" at once
    for route in ("generate", "stream"):
        r = httpx.post(f"{url}/api/{route}", data={"text": "the dog"}, timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"].startswith("busy: one request is running and 0 waiting")
    engine.scheduler.max_queue = 1  # one may wait; it runs when the first is done
    second = threading.Thread(target=client, args=("second", {"text": "the dog", "max_new_tokens": "4"}))
    second.start()
    for _ in range(600):
        if engine.scheduler.pending == 2:
            break
        threading.Event().wait(0.05)
    r = httpx.post(f"{url}/api/generate", data={"text": "a third"}, timeout=60)
    assert r.status_code == 503 and "1 waiting" in r.json()["error"]
    release.set()
    first.join(60)
    second.join(60)
    for name in ("first", "second"):
        status, events = results[name]
        assert status == 200 and events[-1]["type"] == "done", (name, events[-3:])
    assert results["second"][1][0] == {"type": "queued", "ahead": 1}


def test_cli_refuses_bad_flags_in_one_line(tmp_path, stack):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "spiritlm.cli", "serve", *args], capture_output=True, text=True, timeout=120)

    r = run("--model", str(tmp_path / "none"))
    assert r.returncode == 1 and r.stderr.strip() == f"spiritlm serve: error: {tmp_path / 'none'}: no such model directory (--model)"
    r = run("--model", str(stack["model"]), "--max_queue", "-1")
    assert r.returncode == 2 and "--max_queue must be >= 0, got -1 (--max_queue)" in r.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = run("--model", str(stack["model"]), "--port", str(port))
    assert r.returncode == 1 and f"--host 127.0.0.1 --port {port}: cannot listen there" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_serve_command_passes_its_flags_to_the_engine_and_the_server(stack, monkeypatch, capsys):
    """The command's own path from flags to a running server, in process (the slow test below runs
    it for real): the limit flags reach Engine.load as ServeLimits, and uvicorn gets the app."""
    import uvicorn

    from spiritlm.cli import main

    seen = {}
    real_load = Engine.load

    def load(*args, **kwargs):
        seen["limits"] = kwargs["limits"]
        return real_load(*args, **kwargs)

    monkeypatch.setattr(Engine, "load", load)
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port))
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    code = main(["serve", "--model", str(stack["model"]), "--port", str(port), "--max_new_tokens", "50", "--max_queue", "3"])
    assert code in (0, None), capsys.readouterr().err
    assert seen["limits"] == ServeLimits(max_new_tokens=50, max_queue=3)
    assert (seen["host"], seen["port"]) == ("127.0.0.1", port) and seen["app"] is not None
    assert f"[serve] open http://127.0.0.1:{port}/  (Ctrl-C stops)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_serve_command_loads_once_serves_and_stops_on_ctrl_c(stack):
    import signal

    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "spiritlm.cli", "serve", "--model", str(stack["model"]), "--vocoder", str(stack["vocoder"]),
           "--speech_tokenizer", str(stack["speech_tokenizer"]), "--port", str(port), "--threads", "1", "--max_new_tokens", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[serve] open"):
                break
        assert lines and lines[-1].strip() == f"[serve] open http://127.0.0.1:{port}/  (Ctrl-C stops)", lines
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/info").json()["limits"]["max_new_tokens"] == 50
        r = httpx.post(f"{url}/api/generate", data={"text": "the cat", "output_modality": "speech", "max_new_tokens": "10",
                                                   "min_new_tokens": "10"}, timeout=120)
        assert r.status_code == 200 and r.json()["audio_wav_base64"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
