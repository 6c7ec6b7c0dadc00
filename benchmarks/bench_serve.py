"""Latency of ``spiritlm serve``: time to the first text token, to the first audio chunk and to the
full answer, streamed (``/api/stream``) vs not (``/api/generate``), with speech in.

    python benchmarks/bench_serve.py --demo demo_out                      # the models of `make demo`
    python benchmarks/bench_serve.py --model M --speech_tokenizer T --vocoder V --requests 3

The models are served in this process (``spiritlm.serve.app.background_server``, uvicorn on a
thread, the same app as ``spiritlm serve``) with ``--threads`` torch/BLAS threads (default 1), and
requests go to 127.0.0.1 only, one at a time: ``--requests`` of each kind (after one untimed
warm-up), stopping early once ``--max_seconds`` have passed. Each request sends the same WAV
(``--audio``, default the demo's first test utterance) and asks for exactly ``--tokens`` new
tokens (``min_new_tokens = max_new_tokens``) with a fixed seed, so that every run does the same
work. Times are measured by the client from sending the request: first ``text`` event, first
``audio`` event, last event (streamed) or the answer (non-streamed); medians are printed, with
the server's own split (speech tokenizer seconds; LM tokens generated when the first audio chunk
went out) and the audio's real-time factor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def run_stream(client, url: str, data: dict, audio: bytes) -> dict:
    t0 = time.perf_counter()
    first: dict[str, float] = {}
    done = None
    with client.stream("POST", f"{url}/api/stream", data=data, files={"audio": ("prompt.wav", audio, "audio/wav")}) as r:
        if r.status_code != 200:
            r.read()
            raise SystemExit(f"bench_serve: /api/stream answered {r.status_code}: {r.text}")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            first.setdefault(event["type"], time.perf_counter() - t0)
            if event["type"] == "error":
                raise SystemExit(f"bench_serve: {event['message']}")
            if event["type"] == "done":
                done = event
    return {"first_text": first.get("text"), "first_audio": first.get("audio"), "full": time.perf_counter() - t0,
            "server": done["timings"], "audio_s": done["audio_samples"] / done["sample_rate"], "tokens": done["n_tokens"]}


def run_full(client, url: str, data: dict, audio: bytes) -> dict:
    t0 = time.perf_counter()
    r = client.post(f"{url}/api/generate", data=data, files={"audio": ("prompt.wav", audio, "audio/wav")})
    full = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"bench_serve: /api/generate answered {r.status_code}: {r.text}")
    answer = r.json()
    # nothing arrives before the answer: first text / first audio = the full answer's time
    has_text, has_audio = bool(answer["text"]), answer["audio_wav_base64"] is not None
    return {"first_text": full if has_text else None, "first_audio": full if has_audio else None, "full": full,
            "server": answer["timings"], "tokens": answer["n_tokens"]}


def screenshot(url: str, audio_path: str, tokens: int, seed: int, path: str) -> None:
    """The page after a streamed speech answer to ``audio_path`` (what docs/serve.png shows)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        page.goto(url)
        page.wait_for_function("window.spiritlmPage.info !== null")
        page.set_input_files("#audio-file", audio_path)
        page.select_option("#modality", "speech")
        page.click("summary:has-text('sampling')")
        page.fill("#max-new-tokens", str(tokens))
        page.fill("#min-new-tokens", str(tokens))
        page.fill("#seed", str(seed))
        page.click("#generate")
        page.wait_for_function("window.spiritlmPage.done || window.spiritlmPage.error", timeout=600_000)
        page.screenshot(path=path, full_page=True)
        browser.close()
    print(f"# screenshot: {path}")


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", help="a `make demo` folder: its interleaved LM, speech tokenizer and vocoder")
    ap.add_argument("--model")
    ap.add_argument("--speech_tokenizer")
    ap.add_argument("--vocoder")
    ap.add_argument("--audio", help="the WAV prompt (default: the demo's first test utterance)")
    ap.add_argument("--tokens", type=int, default=100, help="new tokens per answer (exactly)")
    ap.add_argument("--requests", type=int, default=3, help="timed requests of each kind (at most 20)")
    ap.add_argument("--max_seconds", type=float, default=300, help="stop starting requests after this long")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk_frames", type=int, default=25, help="spiritlm serve --chunk_frames")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screenshot", help="also load the page in headless Chromium (Playwright, /usr/bin/chromium), "
                                         "answer the prompt in speech and save a PNG of the page here")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 20:
        raise SystemExit("bench_serve: --requests must be in 1..20")

    from spiritlm.recipes.report import DemoLayout, serve_command
    from spiritlm.numerics import threads

    model, stok, voc, audio_path = args.model, args.speech_tokenizer, args.vocoder, args.audio
    if args.demo:
        L = DemoLayout(Path(args.demo))
        model, stok, voc = model or str(L.lm_mix), stok or str(L.tokenizer), voc or str(L.vocoder)
        if audio_path is None:
            from spiritlm.recipes.demo import first_test_item

            item = first_test_item(L.manifest)
            audio_path = item.audio if item else None
    if not (model and stok and voc and audio_path):
        raise SystemExit("bench_serve: give --demo DIR, or --model, --speech_tokenizer, --vocoder and --audio")
    audio = Path(audio_path).read_bytes()

    import httpx
    import soundfile as sf
    import torch

    from spiritlm.serve.app import background_server
    from spiritlm.serve.config import ServeLimits
    from spiritlm.serve.engine import Engine

    print(f"# {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
          f"torch {torch.__version__} | {args.threads} thread(s)")
    info = sf.info(audio_path)
    print(f"# prompt {audio_path}: {info.frames / info.samplerate:.2f} s; {args.tokens} new tokens per answer, seed {args.seed}; "
          f"chunk_frames {args.chunk_frames}")
    if args.demo:
        print(f"# models: {serve_command(DemoLayout(Path(args.demo)))}")
    results: dict[str, list[dict]] = {}
    with threads(args.threads):
        t_load = time.perf_counter()
        engine = Engine.load(model, vocoder=voc, speech_tokenizer=stok, limits=ServeLimits(max_new_tokens=max(args.tokens, 1),
                                                                                     chunk_frames=args.chunk_frames))
        print(f"# load: {time.perf_counter() - t_load:.1f} s; LM {engine.info()['model']['parameters'] / 1e6:.2f} M parameters")
        start = time.perf_counter()
        with background_server(engine) as url, httpx.Client(timeout=600) as client:
            for out in ("speech", "text"):
                data = {"output_modality": out, "max_new_tokens": str(args.tokens), "min_new_tokens": str(args.tokens),
                        "seed": str(args.seed)}
                for kind, fn in (("streamed", run_stream), ("non-streamed", run_full)):
                    fn(client, url, data, audio)  # warm-up
                    rows = results.setdefault(f"S→{'S' if out == 'speech' else 'T'} {kind}", [])
                    for _ in range(args.requests):
                        if time.perf_counter() - start > args.max_seconds:
                            break
                        rows.append(fn(client, url, data, audio))
            if args.screenshot:
                screenshot(url, audio_path, args.tokens, args.seed, args.screenshot)
    print()
    print("| request | n | first text (s) | first audio (s) | full answer (s) | speech tokenizer (s) | tokens at first audio | audio (s) | real-time factor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            continue
        full = median(rows, "full")
        audio_s = median(rows, "audio_s")
        tok_s = statistics.median(r["server"]["tokenize_s"] for r in rows)
        at_audio = [r["server"].get("first_audio_tokens") for r in rows if r["server"].get("first_audio_tokens") is not None]
        print(f"| {name} | {len(rows)} | {fmt(median(rows, 'first_text'))} | {fmt(median(rows, 'first_audio'))} | {fmt(full)} | "
              f"{tok_s:.3f} | {statistics.median(at_audio) if at_audio else '–'} | {fmt(audio_s)} | "
              f"{'–' if not audio_s else f'{full / audio_s:.2f}'} |")


if __name__ == "__main__":
    main()
