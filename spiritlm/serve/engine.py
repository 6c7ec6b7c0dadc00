"""Requests to answers: checking, prompting, streamed and non-streamed generation, one at a time.

An :class:`Engine` holds the models ``spiritlm serve`` loaded once at start (the LM, and
optionally the speech tokenizer and the vocoder). A request is a :class:`GenerationRequest`;
:meth:`Engine.check` refuses a bad one (:class:`RequestError`, naming the field) before it
queues, :meth:`Engine.run_stream` answers it as events while it is generated and
:meth:`Engine.run_full` as one answer. A :class:`Scheduler` runs one request at a time on one
worker thread and answers "busy" (:class:`Busy`) past ``max_queue`` waiting requests.

Events of a streamed answer (dicts, ``type`` first):

* ``prompt``: ``prompt`` (the LM prompt), ``speech_in`` (the upload's token string, if any),
  ``tokenize_s`` (seconds the speech tokenizer took);
* ``text``: ``delta``, the text of one generated token;
* ``units``: ``delta``, one generated speech token (``[Hu12]``, ``[Pi3]``, ``[St7]``);
* ``audio``: ``pcm_f32le`` (base64 of float32 little-endian samples at ``sample_rate``),
  ``samples``, ``offset`` (samples before it), ``segment`` (index of the speech segment);
* ``done``: ``text``, ``tokens`` (the speech token strings), ``n_tokens``, ``audio_samples``,
  ``sample_rate`` and ``timings`` (seconds from the start of the run: ``first_text_s``,
  ``first_audio_s``, ``total_s``; ``tokenize_s``; ``first_audio_tokens``: tokens generated when
  the first audio chunk went out);
* ``error``: ``message``, ``status``, ``field``.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from spiritlm.constants import SAMPLE_RATE
from spiritlm.errors import UserError, one_line
from spiritlm.serve.config import ServeLimits
from spiritlm.serve.streaming import RequestVoice, stream_audio, stream_pieces

OUTPUT_MODALITIES = ("text", "speech", "arbitrary")

Emit = Callable[[dict[str, Any]], None]


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``field`` the request field at fault."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"type": "error", "message": self.message, "status": self.status, "field": self.field}


class Busy(RequestError):
    """Past ``--max_queue``: the request was not queued."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


class Cancelled(Exception):
    """The client went away; the run stopped at the next token."""


@dataclass
class GenerationRequest:
    """One request: a text and/or speech prompt, the output modality and the sampling settings.

    ``speech`` is a token string (``"[Hu12][Hu7]"``); ``audio`` the bytes of an uploaded
    WAV/FLAC (``audio_name`` is how errors name it). The other fields are those of
    ``spiritlm generate``; ``speaker`` and ``style`` pick a row (index or name) of the
    vocoder's speaker and style-id tables.
    """

    text: str | None = None
    speech: str | None = None
    audio: bytes | None = None
    audio_name: str = "upload"
    speech_first: bool = False
    output_modality: str = "text"
    max_new_tokens: int | None = None  # None: 200, or the server's limit when lower
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    seed: int | None = 0
    speaker: str | None = None
    style: str | None = None
    # filled by Engine.check: the decoded upload (float32, 16 kHz)
    waveform: np.ndarray | None = field(default=None, repr=False)

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of ``SpiritLM.generate`` / ``SpiritLM.stream``."""
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}


_BOOL = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_request(values: Mapping[str, Any], audio: bytes | None = None, audio_name: str = "upload") -> GenerationRequest:
    """A :class:`GenerationRequest` from form or JSON fields (strings or JSON values).

    Unknown fields and values of the wrong type are refused with a :class:`RequestError` naming
    the field; empty strings count as absent.
    """
    known = {f.name: f for f in fields(GenerationRequest) if f.name not in ("audio", "audio_name", "waveform")}
    unknown = sorted(set(values) - set(known) - {"audio"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (fields: {', '.join(known)})", field=unknown[0])
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "audio" or value is None or (isinstance(value, str) and value.strip() == "" and name != "text"):
            continue
        try:
            if name in ("speech_first", "do_sample"):
                kwargs[name] = value if isinstance(value, bool) else _BOOL[str(value).strip().lower()]
            elif name in ("max_new_tokens", "min_new_tokens", "top_k", "seed"):
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                kwargs[name] = int(value)
            elif name in ("temperature", "top_p"):
                if isinstance(value, bool):
                    raise ValueError
                kwargs[name] = float(value)
            else:
                kwargs[name] = str(value)
        except (KeyError, ValueError, TypeError):
            kind = ("true or false" if name in ("speech_first", "do_sample") else
                    "an integer" if name in ("max_new_tokens", "min_new_tokens", "top_k", "seed") else "a number")
            raise RequestError(f"{name} {value!r}: must be {kind}", field=name) from None
    return GenerationRequest(**kwargs, audio=audio or None, audio_name=audio_name)


class Scheduler:
    """Runs requests one at a time on one worker thread; at most ``max_queue`` wait behind it.

    ``submit`` raises :class:`Busy` when one request runs and ``max_queue`` wait already.
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._pending = 0  # running + waiting
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spiritlm-serve")

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with self._lock:
            if self._pending > self.max_queue:
                waiting = self._pending - 1
                raise Busy(f"busy: one request is running and {waiting} waiting, the most this server queues "
                           f"(spiritlm serve --max_queue {self.max_queue}); try again when it is done")
            self._pending += 1

        def run() -> Any:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._pending -= 1

        return self._pool.submit(run)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class RunState:
    """What a streamed run has produced so far (handed to :attr:`Engine.on_piece`)."""

    cancel: threading.Event
    tokens: int = 0
    audio_chunks: int = 0


class Engine:
    """The loaded models and what the server does with a request.

    Args:
        lm: a :class:`spiritlm.generation.SpiritLM` (its ``speaker`` is left None: each request
            picks its own).
        speech_tokenizer: turns audio uploads into speech token strings (``encode_string``).
        vocoder: a :class:`spiritlm.vocoder.Vocoder`; speech answers are then audio.
        limits: :class:`ServeLimits`.
        names: what the page shows for each loaded part (``model``, ``speech_tokenizer``,
            ``vocoder``: usually their directories).

    Attributes:
        on_piece: called on the worker thread after each streamed token's events were sent, with
            the run's :class:`RunState` (tests pause a run there; None: nothing).
        stats: requests ``served``, ``cancelled`` (client gone), ``failed``, ``refused``.
    """

    def __init__(self, lm: Any, *, speech_tokenizer: Any = None, vocoder: Any = None,
                 limits: ServeLimits | None = None, names: Mapping[str, str] | None = None) -> None:
        self.lm = lm
        self.lm.speaker = None
        self.lm.vocoder = vocoder
        self.speech_tokenizer = speech_tokenizer
        if speech_tokenizer is not None and getattr(lm, "speech_tokenizer", None) is None:
            lm.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
        self.limits = limits or ServeLimits()
        self.names = dict(names or {})
        self.sample_rate = int(getattr(vocoder, "sample_rate", SAMPLE_RATE))
        self.scheduler = Scheduler(self.limits.max_queue)
        self.on_piece: Callable[[RunState], None] | None = None
        self.stats = {"served": 0, "cancelled": 0, "failed": 0, "refused": 0}
        self._lock = threading.Lock()  # the models serve one run at a time, whoever calls

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, vocoder: str | None = None, speech_tokenizer: str | None = None, *,
             device: str = "cpu", limits: ServeLimits | None = None) -> "Engine":
        """Loads the model directory (and the speech tokenizer and vocoder directories) once."""
        import torch

        from spiritlm.generation import SpiritLM

        stok = voc = None
        if speech_tokenizer is not None:
            from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer

            stok = SpeechTokenizer.load(speech_tokenizer, device=device)
        if vocoder is not None:
            from spiritlm.vocoder import Vocoder

            voc = Vocoder.from_pretrained(vocoder, device=device)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        lm = SpiritLM.from_pretrained(model, speech_tokenizer=stok, vocoder=voc, device=device, dtype=dtype)
        names = {"model": str(model)}
        if speech_tokenizer is not None:
            names["speech_tokenizer"] = str(speech_tokenizer)
        if vocoder is not None:
            names["vocoder"] = str(vocoder)
        return cls(lm, speech_tokenizer=stok, vocoder=voc, limits=limits, names=names)

    def info(self) -> dict[str, Any]:
        """What is loaded and what a request may ask (``/api/info``; the page shows it)."""
        cfg = self.lm.config
        params = sum(p.numel() for p in self.lm.model.parameters())
        out: dict[str, Any] = {
            "model": {"path": self.names.get("model"), "parameters": params, "layers": cfg.num_layers,
                      "width": cfg.model_dim, "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
                      "device": str(self.lm.device)},
            "speech_tokenizer": None,
            "vocoder": None,
            "output_modalities": list(OUTPUT_MODALITIES),
            "limits": asdict(self.limits),
            "stats": dict(self.stats, pending=self.scheduler.pending),
        }
        if self.speech_tokenizer is not None:
            st = self.speech_tokenizer
            out["speech_tokenizer"] = {"path": self.names.get("speech_tokenizer"), "kind": getattr(st, "kind", None),
                                       "num_units": dict(getattr(st, "num_units", {}) or {})}
        if self.vocoder is not None:
            vc = getattr(self.vocoder, "config", None)
            n_spk, n_sty = int(getattr(vc, "num_speakers", 0) or 0), int(getattr(vc, "num_style_ids", 0) or 0)
            spk_names = getattr(self.vocoder, "speakers", None)
            sty_names = getattr(self.vocoder, "styles", None)
            out["vocoder"] = {
                "path": self.names.get("vocoder"), "sample_rate": self.sample_rate,
                "speakers": list(spk_names) if spk_names else [str(i) for i in range(n_spk)],
                "styles": list(sty_names) if sty_names else [str(i) for i in range(n_sty)],
                "expressive": bool(getattr(vc, "num_pitch", 0)),
            }
        return out

    # -- checking ----------------------------------------------------------------------------

    def check(self, req: GenerationRequest) -> GenerationRequest:
        """Refuses a bad request before it queues (:class:`RequestError` naming the field).

        Decodes an audio upload into ``req.waveform`` (after its header shows it is short enough).
        """
        lim = self.limits
        try:
            self._check(req, lim)
        except RequestError:
            self.stats["refused"] += 1
            raise
        return req

    def _check(self, req: GenerationRequest, lim: ServeLimits) -> None:
        from spiritlm.formats import UnitFormatError, parse_speech_string
        from spiritlm.generation import build_prompt

        if req.output_modality not in OUTPUT_MODALITIES:
            raise RequestError(f"output_modality {req.output_modality!r}: choose from {', '.join(OUTPUT_MODALITIES)}",
                               field="output_modality")
        text = req.text if req.text is not None and req.text.strip() else None
        req.text = text
        if req.speech is not None and req.audio is not None:
            raise RequestError("give speech tokens or an audio upload, not both", field="speech")
        if text is None and req.speech is None and req.audio is None:
            raise RequestError("empty prompt: type a text, give speech tokens or upload a WAV/FLAC", field="text")
        if req.max_new_tokens is None:
            req.max_new_tokens = min(200, lim.max_new_tokens)
        if req.max_new_tokens > lim.max_new_tokens:
            raise RequestError(f"max_new_tokens {req.max_new_tokens}: this server allows at most {lim.max_new_tokens} "
                               f"(spiritlm serve --max_new_tokens)", field="max_new_tokens")
        _check_sampling(req)
        if text is not None and len(text) > lim.max_text_chars:
            raise RequestError(f"text: {len(text)} characters, more than this server's {lim.max_text_chars} "
                               f"(spiritlm serve --max_text_chars)", status=413, field="text")
        if req.speech is not None:
            try:
                parse_speech_string(req.speech)
            except UnitFormatError as e:
                raise RequestError(f"speech: {one_line(e)}", field="speech") from None
            if not req.speech.lstrip().startswith("["):
                raise RequestError("speech: not a token string such as [Hu12][Hu7] (upload audio as a file)", field="speech")
        if req.audio is not None:
            req.waveform = self._decode_audio(req.audio, req.audio_name)
        typed = [(m, c) for m, c in self._order(req, speech_tokens="")]
        try:
            ids = self.lm.tokenizer.encode(build_prompt(typed, req.output_modality), bos=True, eos=False)
        except KeyError as e:  # "(at character N)" counts in the rendered prompt, not in the field
            raise RequestError(f"speech: {re.sub(r' [(]at character [0-9]+[)]', '', str(e.args[0]))} of the loaded model ({self.names.get('model', 'model')})",
                               field="speech") from None
        if len(ids) >= self.lm.config.max_seq_len:
            raise RequestError(f"prompt of {len(ids)} tokens leaves no room in the model's context of "
                               f"{self.lm.config.max_seq_len} tokens", status=413, field="text" if text else "speech")
        if req.speaker is not None or req.style is not None:
            if self.vocoder is None:
                raise RequestError("speaker/style choose the vocoder's voice, and this server has no vocoder "
                                   "(spiritlm serve --vocoder DIR)", field="speaker" if req.speaker is not None else "style")
            for what, value, names, size in (
                ("speaker", req.speaker, getattr(self.vocoder, "speakers", None), getattr(self.vocoder.config, "num_speakers", 0)),
                ("style", req.style, getattr(self.vocoder, "styles", None), getattr(self.vocoder.config, "num_style_ids", 0)),
            ):
                if value is None:
                    continue
                try:
                    self.vocoder._index(value, names, size, what)
                except UserError as e:
                    raise RequestError(one_line(e).replace(f"(--{what})", f"({what})"), field=what) from None

    def _decode_audio(self, data: bytes, name: str) -> np.ndarray:
        from spiritlm.audio import AudioError, audio_info, load_audio

        if self.speech_tokenizer is None:
            raise RequestError("audio: this server has no speech tokenizer to turn audio into units "
                               "(spiritlm serve --speech_tokenizer DIR); give speech tokens instead", field="audio")
        try:
            info = audio_info(data, name=name)
        except AudioError:
            raise RequestError(f"audio {name!r}: not an audio file (upload a WAV or FLAC)", status=415, field="audio") from None
        seconds = info.duration if info.sample_rate else 0.0
        if seconds > self.limits.max_audio_seconds:
            raise RequestError(f"audio {name!r}: {seconds:.1f} s, longer than this server's {self.limits.max_audio_seconds:g} s "
                               f"(spiritlm serve --max_audio_seconds)", status=413, field="audio")
        try:
            return load_audio(data, name=name)
        except AudioError as e:
            raise RequestError(f"audio {one_line(e)}", field="audio") from None

    @staticmethod
    def _order(req: GenerationRequest, speech_tokens: str | None = None) -> list[tuple[str, str]]:
        """The prompt's inputs in order; ``speech_tokens`` stands for the upload's token string."""
        items: list[tuple[str, str]] = []
        if req.text is not None:
            items.append(("text", req.text))
        speech = req.speech if req.speech is not None else (speech_tokens if req.audio is not None else None)
        if speech is not None:
            items.insert(0 if req.speech_first else len(items), ("speech", speech))
        return items

    # -- running -----------------------------------------------------------------------------

    def _inputs(self, req: GenerationRequest) -> tuple[list[tuple[str, str]], str | None, float]:
        """The prompt's inputs with the upload tokenized; (inputs, the upload's tokens, seconds it took)."""
        tokens, seconds = None, 0.0
        if req.waveform is not None:
            t = time.perf_counter()
            tokens = self.speech_tokenizer.encode_string(req.waveform)
            seconds = time.perf_counter() - t
            if not tokens:
                raise RequestError(f"audio {req.audio_name!r}: the speech tokenizer found no units in it", field="audio")
        return self._order(req, tokens), tokens, seconds

    def run_stream(self, req: GenerationRequest, emit: Emit, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Generates ``req`` (checked) and sends its events through ``emit`` as they are produced.

        Text deltas go out per token; speech tokens go to the vocoder's stream and each audio
        chunk goes out as soon as the vocoder returns it. Stops with :class:`Cancelled` at the
        next token once ``cancel`` is set. Returns the ``done`` event (also emitted).
        """
        cancel = cancel or threading.Event()
        with self._lock:
            try:
                done = self._run_stream(req, emit, cancel)
            except Cancelled:
                self.stats["cancelled"] += 1
                raise
            except BaseException:
                self.stats["failed"] += 1
                raise
            self.stats["served"] += 1
            return done

    def _run_stream(self, req: GenerationRequest, emit: Emit, cancel: threading.Event) -> dict[str, Any]:
        from spiritlm.generation import build_prompt

        t0 = time.perf_counter()
        inputs, speech_in, tokenize_s = self._inputs(req)
        emit({"type": "prompt", "prompt": build_prompt(inputs, req.output_modality), "speech_in": speech_in,
              "tokenize_s": tokenize_s})
        state = RunState(cancel)
        timings: dict[str, float | None] = {"tokenize_s": tokenize_s, "first_text_s": None, "first_audio_s": None,
                                            "first_audio_tokens": None}
        text: list[str] = []
        segments: list[list[str]] = []  # speech token strings, one list per segment
        last_modality = None
        try:
            pieces = stream_pieces(self.lm, inputs, req.output_modality, **req.sampling())
        except ValueError as e:  # a prompt too long for the context once the upload is tokenized
            raise RequestError(one_line(e), field="audio" if speech_in else "text") from None

        def pulled() -> Iterator[Any]:
            nonlocal last_modality
            for piece in pieces:
                if cancel.is_set():
                    raise Cancelled()
                state.tokens += 1
                if piece.modality == "speech":
                    if last_modality != "speech":
                        segments.append([])
                    if piece.unit:
                        segments[-1].append(piece.unit)
                        emit({"type": "units", "delta": piece.unit, "segment": len(segments) - 1})
                elif piece.text:
                    text.append(piece.text)
                    if timings["first_text_s"] is None:
                        timings["first_text_s"] = time.perf_counter() - t0
                    emit({"type": "text", "delta": piece.text})
                last_modality = piece.modality
                yield piece
                if self.on_piece is not None:
                    self.on_piece(state)
            if cancel.is_set():
                raise Cancelled()

        source = _Peekable(pulled())
        offset = 0
        try:
            while (piece := source.peek()) is not None:
                if piece.modality != "speech" or self.vocoder is None:
                    next(source)
                    continue
                segment = len(segments) - 1  # pulled() opened it when it read this piece

                def units() -> Iterator[str]:  # this speech segment's tokens, as the LM produces them
                    while (p := source.peek()) is not None and p.modality == "speech":
                        next(source)
                        if p.unit:
                            yield p.unit

                for chunk in stream_audio(self.vocoder, units(), speaker=_row(req.speaker), style=_row(req.style),
                                          chunk_frames=self.limits.chunk_frames):
                    if cancel.is_set():
                        raise Cancelled()
                    if chunk.size == 0:
                        continue
                    if timings["first_audio_s"] is None:
                        timings["first_audio_s"] = time.perf_counter() - t0
                        timings["first_audio_tokens"] = state.tokens  # LM tokens the first chunk waited for
                    emit({"type": "audio", "segment": segment, "offset": offset, "samples": int(chunk.size),
                          "sample_rate": self.sample_rate, "pcm_f32le": encode_pcm(chunk)})
                    offset += int(chunk.size)
                    state.audio_chunks += 1
        except UserError as e:  # the vocoder refused the generated tokens (e.g. no [Hu] at all)
            raise RequestError(f"vocoder: {one_line(e)}", status=500, field=None) from None
        finally:
            source.close()
        timings["total_s"] = time.perf_counter() - t0
        done = {"type": "done", "text": "".join(text), "tokens": ["".join(s) for s in segments], "n_tokens": state.tokens,
                "audio_samples": offset, "sample_rate": self.sample_rate, "timings": timings}
        emit(done)
        return done

    def run_full(self, req: GenerationRequest) -> dict[str, Any]:
        """Generates ``req`` (checked) with ``SpiritLM.generate`` and the vocoder, as one answer.

        Returns ``{"text", "tokens", "segments", "n_tokens", "audio_wav" (WAV bytes or None),
        "sample_rate", "timings"}``.
        """
        with self._lock:
            try:
                out = self._run_full(req)
            except BaseException:
                self.stats["failed"] += 1
                raise
            self.stats["served"] += 1
            return out

    def _run_full(self, req: GenerationRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        inputs, speech_in, tokenize_s = self._inputs(req)
        self.lm.vocoder = RequestVoice(self.vocoder, _row(req.speaker), _row(req.style)) if self.vocoder is not None else None
        try:
            res = self.lm.generate_with_details(inputs, output_modality=req.output_modality, **req.sampling())
        except ValueError as e:
            raise RequestError(one_line(e), field="audio" if speech_in else "text") from None
        except UserError as e:
            raise RequestError(f"vocoder: {one_line(e)}", status=500) from None
        finally:
            self.lm.vocoder = self.vocoder
        segments, wavs = [], []
        for seg in res["outputs"]:
            if seg.modality == "text":
                segments.append({"modality": "text", "text": seg.content})
            else:
                item: dict[str, Any] = {"modality": "speech", "tokens": seg.tokens}
                if self.vocoder is not None:
                    wav = np.asarray(seg.content, dtype=np.float32).reshape(-1)
                    item["samples"] = int(wav.size)
                    wavs.append(wav)
                segments.append(item)
        audio = np.concatenate(wavs) if wavs else None
        return {
            "prompt": res["prompt"], "speech_in": speech_in,
            "text": "".join(s["text"] for s in segments if s["modality"] == "text"),
            "tokens": [s["tokens"] for s in segments if s["modality"] == "speech"],
            "segments": segments, "n_tokens": len(res["ids"]),
            "audio_wav": wav_bytes(audio, self.sample_rate) if audio is not None else None,
            "sample_rate": self.sample_rate,
            "timings": {"tokenize_s": tokenize_s, "total_s": time.perf_counter() - t0},
        }


def _check_sampling(req: GenerationRequest) -> None:
    # `spiritlm generate`'s flag types and rules, in the API's field names: one declaration of both
    from spiritlm.cli import check_values
    from spiritlm.generation_cli import _check_sampling as check, generate_fn

    try:
        check_values(generate_fn, max_new_tokens=req.max_new_tokens, min_new_tokens=req.min_new_tokens,
                     temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)
        check(req.max_new_tokens, req.min_new_tokens, req.do_sample, req.temperature)
    except UserError as e:
        message = one_line(e).replace("--", "")
        raise RequestError(message, field=message.split(" ", 1)[0]) from None


def _row(value: str | None) -> int | str | None:
    """A speaker/style field: a row index when it is digits, else a name."""
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else value


def encode_pcm(chunk: np.ndarray) -> str:
    """Base64 of float32 little-endian samples (what an ``audio`` event carries)."""
    return base64.b64encode(np.ascontiguousarray(chunk, dtype="<f4").tobytes()).decode("ascii")


def decode_pcm(data: str) -> np.ndarray:
    """Inverse of :func:`encode_pcm`."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """A float32 WAV file of ``wav`` (samples kept exactly, as the page's download is)."""
    from spiritlm.audio import write_audio

    buf = io.BytesIO()
    write_audio(buf, np.asarray(wav, dtype=np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


class _Peekable:
    """An iterator with one item of look-ahead (``peek`` returns None at the end)."""

    _EMPTY = object()

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it
        self._next: Any = self._EMPTY

    def peek(self) -> Any:
        if self._next is self._EMPTY:
            self._next = next(self._it, None)
        return self._next

    def __iter__(self) -> "_Peekable":
        return self

    def __next__(self) -> Any:
        item = self.peek()
        self._next = self._EMPTY
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
