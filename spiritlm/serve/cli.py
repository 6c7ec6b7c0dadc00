"""``spiritlm serve``: a local web page and API to talk to a trained model (see :mod:`spiritlm.serve`)."""

from __future__ import annotations

from jsonargparse.typing import NonNegativeInt

from spiritlm.cli import Port, flags_from
from spiritlm.serve.config import ServeLimits


@flags_from(ServeLimits, "max_queue", "max_upload_mb", "max_audio_seconds", "max_new_tokens", "max_text_chars", "chunk_frames")
def serve(
    model: str,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    host: str = "127.0.0.1",
    port: Port = 8000,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    **limits,
) -> None:
    """Serve a model: a web page (record, upload or type; hear the answer as it streams) and an API.

    Models load once at start. One request runs at a time; ``max_queue`` more may wait, later
    ones are answered "busy". Open ``http://HOST:PORT/`` in a browser; the API is
    ``POST /api/generate`` (one JSON answer) and ``POST /api/stream`` (server-sent events).

    Args:
        model: a model directory, as for ``spiritlm generate --model`` (a run, its ``hf/``, or
            Meta's spirit-lm-base-7b).
        vocoder: a unit vocoder directory (ours or Meta's ``hifigan_spiritlm_*``): speech
            answers are then audio, streamed as it is synthesised.
        speech_tokenizer: a speech tokenizer directory: needed for recorded or uploaded audio.
        host: the address to listen on (default: this machine only; anything else exposes the
            model to the network).
        port: the TCP port.
        device: ``cpu`` or ``cuda[:N]``.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
    """
    import socket

    from spiritlm.errors import UserError
    from spiritlm.generation_cli import check_model_paths

    settings = ServeLimits(**limits)
    check_model_paths(model, speech_tokenizer, vocoder)
    try:  # a busy port costs a second here, not after the models load
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None

    from spiritlm.numerics import threads as thread_pools

    with thread_pools(threads):  # process-wide: the worker thread that generates runs with them
        _serve(model, vocoder, speech_tokenizer, host, port, device, settings)


def _serve(model, vocoder, speech_tokenizer, host, port, device, settings) -> None:
    import uvicorn

    from spiritlm.serve.app import create_app
    from spiritlm.serve.engine import Engine

    engine = Engine.load(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer, device=device, limits=settings)
    info = engine.info()
    print(f"[serve] model {model} ({info['model']['parameters'] / 1e6:.1f} M parameters)"
          + (f", speech tokenizer {speech_tokenizer}" if speech_tokenizer else ", no speech tokenizer (no audio input)")
          + (f", vocoder {vocoder}" if vocoder else ", no vocoder (speech answers as tokens)"))
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[serve] listening on {host}: anyone who can reach this address can use the model")
    print(f"[serve] open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="warning")


COMMANDS = serve
