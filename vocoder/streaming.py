"""Streaming synthesis: a growing stream of speech tokens → waveform chunks equal to whole synthesis.

:meth:`spiritlm.vocoder.Vocoder.stream` drives the two classes here:

* :class:`TokenReader` turns pieces of an LM's output (one token per piece, ``"[Hu12]"``, or
  whole strings, or tokens split across pieces) into units with their pitch and style codes,
  with the rule of :func:`spiritlm.formats.string_to_units`: a unit takes the pitch and style
  tokens last seen before it, and units before the first pitch (style) token take the first one.
  So a unit is *settled* once its codes are known: at once after the first ``[PiN]`` / ``[StN]``;
  units before those wait for them (or for the end of the stream, where the vocoder's default
  codes fill in, as :meth:`Vocoder.prepare` does).
* :class:`UnitStreamer` turns settled units into audio. The duration predictor and the harmonic
  source's F0 head read a bounded neighbourhood (zero padding at the utterance's edges, as whole
  synthesis):

  ============================  ================================================================
  duration predictor            ``model.duration_context`` units each side (2: two k=3 convs)
  harmonic source's F0 head     ``model.source.context`` frames each side (2)
  ============================  ================================================================

  A unit's duration is final once ``duration_context`` more units are settled, a frame's F0 once
  ``source.context`` more frames exist (both are recomputed over that small context: the F0
  head is a few kernel-3 convolutions at 25 Hz). Durations come from
  :meth:`~spiritlm.vocoder.model.DurationPredictor.infer` on the window of ``2 ·
  duration_context + 1`` units, which gives a unit the same float32 bits as whole synthesis
  (:meth:`UnitHifiGAN.predict_durations` on a CPU model runs it over the utterance) and
  :func:`~spiritlm.vocoder.model.frames_from_log` rounds them one at a time: streamed durations
  are whole synthesis' exactly, not to float rounding (a unit near a half frame would otherwise
  get one frame more in one of them, shifting all the audio after it). A frame whose generator input and F0 are final
  is pushed, with its excitation (the sine phase carried across pushes,
  :func:`~spiritlm.vocoder.model.excitation_phase`), into a
  :class:`~spiritlm.vocoder.streaming_generator.StreamingGenerator`: the generator run layer by
  layer, each convolution keeping the tail of its input it still needs, so every sample of audio
  is computed once and a sample comes out as soon as its receptive field's inputs are in.

Cost: the generator's arithmetic per second of audio is whole synthesis' at any ``chunk_frames``
(1 frame = 640 samples = 40 ms at 16 kHz); each push adds a fixed per-call overhead (~92
convolution calls for the ``base`` layout, each layer's kernels read into cache again: ~20 ms a
push on the 2-core VM, a floor of ~1.2× whole synthesis at 25-frame chunks) and each token a duration prediction over ~5 units
(~40 numpy calls on arrays of ≤ 3·128·128: 69–110 µs on ``base``, 1 thread, against 305–484 µs
for the module's forward on the window; ``benchmarks/bench_vocoder.py --stream --dur_before``).
Measured on a 2-core CPU, 1 thread (vocoder README, "Streaming"): 1.2–1.5× whole synthesis with
25-frame chunks for ``base`` (the windowed streamer this replaced: 1.9–2.6×), 4–6× with 1-frame
chunks (49× by construction before).
Latency: frames are pushed once ``chunk_frames`` frames of new audio would be final
(:meth:`StreamingGenerator.final_samples`): ``chunk_frames`` plus the generator's right reach
(7.7 frames for ``tiny``, 19.8 for ``base``; the windows waited ``model.context_frames``, 11 / 24)
frames of units, + ``source.context`` frames for the F0 head and ``duration_context`` units for
the durations, after the first settled unit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from spiritlm.errors import UserError
from spiritlm.formats import SPEECH_TOKEN_RE

from .model import DurationPredictor, UnitHifiGAN, excitation_phase, frames_from_log
from .streaming_generator import StreamingGenerator

__all__ = ["TokenReader", "UnitStreamer"]


class TokenReader:
    """Incremental :func:`~spiritlm.formats.string_to_units`: feed text pieces, get settled units.

    Args:
        has_pitch / has_style: whether the vocoder reads the stream (a base vocoder ignores
            pitch and style tokens; its units settle at once).

    Attributes:
        units, pitch, style: settled units and their codes (lists of ints; pitch / style stay
            empty for a vocoder without the table).
    """

    def __init__(self, has_pitch: bool, has_style: bool) -> None:
        self.has_pitch, self.has_style = has_pitch, has_style
        self._buf = ""
        self._pending: list[tuple[int, int | None, int | None]] = []  # units whose codes are unknown yet
        self._pitch: int | None = None
        self._style: int | None = None
        self._first_pitch: int | None = None
        self._first_style: int | None = None
        self.units: list[int] = []
        self.pitch: list[int] = []
        self.style: list[int] = []
        self.saw_style = False

    def feed(self, text: str) -> None:
        """Reads the complete tokens of ``text`` (a trailing partial ``[Hu1`` waits for its rest)."""
        if not isinstance(text, str):
            raise UserError(f"speech tokens must be strings like '[Hu12]', got {type(text).__name__}")
        self._buf += text
        cut = self._buf.rfind("[")
        if cut >= 0 and "]" not in self._buf[cut:]:
            done, self._buf = self._buf[:cut], self._buf[cut:]
            if len(self._buf) > 32:  # not a token being completed: text that never closes
                done, self._buf = done + self._buf, ""
        else:
            done, self._buf = self._buf, ""
        for m in SPEECH_TOKEN_RE.finditer(done):
            kind, value = m.group(1), int(m.group(2))
            if kind == "Hu":
                self._pending.append((value, self._pitch, self._style))
            elif kind == "Pi":
                self._pitch = value
                if self._first_pitch is None:
                    self._first_pitch = value
            else:
                self._style = value
                self.saw_style = True
                if self._first_style is None:
                    self._first_style = value
        self._settle(final=False)

    def finish(self, default_pitch: int | None, default_style: int | None) -> None:
        """End of stream: units still waiting for a first pitch / style token get the default."""
        self.feed("")
        if self._buf:
            self._buf += " "  # an unclosed "[Hu1" at the very end is not a token
            self.feed("")
        if self.has_pitch and self._first_pitch is None and self._pending:
            if default_pitch is None:
                raise UserError(
                    "no 'pitch' stream (no [PiN] tokens) and this vocoder stores no default_pitch code to fill in "
                    "(set one in its config.json; `spiritlm vocoder train` stores the most frequent training code)"
                )
            self._first_pitch = default_pitch
        if self.has_style and self._first_style is None:
            self._first_style = default_style
        self._settle(final=True)

    def _settle(self, final: bool) -> None:
        if (self.has_pitch and self._first_pitch is None) or (self.has_style and self._first_style is None and not final):
            return
        for unit, pitch, style in self._pending:
            self.units.append(unit)
            if self.has_pitch:
                self.pitch.append(self._first_pitch if pitch is None else pitch)  # type: ignore[arg-type]
            if self.has_style:
                self.style.append(self._first_style if style is None else style)  # type: ignore[arg-type]
        self._pending.clear()


class UnitStreamer:
    """Settled units (one call per growth of the lists) → new final audio samples.

    Args:
        model: the generator, in eval mode.
        speaker, style_id: table rows.
        dur_pred: give each unit its predicted duration (token strings); False: one frame each.
        chunk_frames: run the generator once at least this many frames (640 samples each) of
            new audio would be final; the end of the stream flushes whatever is left.
    """

    def __init__(self, model: UnitHifiGAN, *, speaker: int, style_id: int, dur_pred: bool, chunk_frames: int) -> None:
        if chunk_frames < 1:
            raise UserError(f"chunk_frames must be >= 1, got {chunk_frames} (--chunk_frames)")
        self.model = model
        self.dev = next(model.parameters()).device
        self.speaker = torch.tensor([speaker], device=self.dev)
        self.style_id = torch.tensor([style_id], device=self.dev)
        self.dur_pred = dur_pred
        self.chunk = chunk_frames
        self.dctx = model.duration_context if dur_pred else 0
        # the duration predictor's numpy weights, fetched once: weights do not change mid-stream
        self._dur_w = model.duration_predictor.inference_weights(model.unit_embedding.weight) if dur_pred else None  # type: ignore[union-attr]
        self.hctx = model.source.context if model.source is not None else 0
        self.S = model.config.f0_frames_per_unit
        self.frame_unit: list[int] = []  # unit index of every frame (durations expanded)
        self.f0 = torch.zeros(1, 0, dtype=torch.float32)  # the source's F0 of the final frames, 200 Hz
        self.phase = torch.zeros(1, dtype=torch.float64)  # source phase at the first frame not yet pushed
        self.gen = StreamingGenerator(model, model.source_convs, model.unit_embedding.weight.dtype, self.dev)
        self.pushed = 0  # frames given to the generator
        self.emitted = 0  # samples it returned
        self._units_expanded = 0  # units whose frames are in frame_unit

    def _embed(self, units: list[int], pitch: list[int], style: list[int], idx: np.ndarray) -> torch.Tensor:
        """Generator input ``[1, C, len(idx)]`` of the units at positions ``idx``."""
        dev = self.dev

        def take(codes: list[int]) -> torch.Tensor | None:
            return torch.as_tensor(np.asarray(codes, dtype=np.int64)[idx], device=dev)[None] if codes else None

        return self.model.embed(take(units), take(pitch), take(style), self.speaker, self.style_id, aligned=True)  # type: ignore[arg-type]

    def _expand_durations(self, units: list[int], final: bool) -> None:
        """Appends to ``frame_unit`` the frames of the units whose duration is now final."""
        n = len(units)
        n_dur = n if final else max(0, n - self.dctx)  # units whose neighbourhood is settled
        done = self._units_expanded
        if n_dur <= done:
            return
        if self._dur_w is not None:
            # the window of units done - dctx .. n_dur + dctx, "no unit" past the utterance's edges:
            # DurationPredictor.infer gives each unit the bits whole synthesis gives it
            # (Vocoder.synthesize → predict_durations, the same function over the whole utterance)
            lo, hi, pad = done - self.dctx, n_dur + self.dctx, self._dur_w.pad
            ids = [pad] * max(0, -lo) + units[max(0, lo) : min(n, hi)] + [pad] * max(0, hi - n)
            frames = frames_from_log(DurationPredictor.infer(self._dur_w, np.array(ids, dtype=np.int64)).tolist())
        else:
            frames = [1] * (n_dur - done)
        for i, f in zip(range(done, n_dur), frames):
            self.frame_unit.extend([i] * int(f))
        self._units_expanded = n_dur

    def _ready_frames(self, final: bool) -> int:
        """Frames whose generator input and (harmonic source) F0 neighbourhood are final."""
        F = len(self.frame_unit)
        return F if final or self.model.source is None else max(0, F - self.hctx)

    def _predict_f0(self, units: list[int], pitch: list[int], style: list[int], ready: int) -> None:
        """Appends to ``f0`` the source's F0 of frames up to ``ready``, read over the F0 head's
        context (zero padding at the utterance's end once all frames are in)."""
        have = self.f0.size(1) // self.S
        if ready <= have:
            return
        F = len(self.frame_unit)
        lo = max(0, have - self.hctx)
        x = self._embed(units, pitch, style, np.asarray(self.frame_unit[lo:F], dtype=np.int64))
        log_f0, logit = self.model.predict_f0(x)
        f0 = self.model.source.f0_from_prediction(log_f0, logit)[:, (have - lo) * self.S : (ready - lo) * self.S]  # type: ignore[union-attr]
        self.f0 = torch.cat([self.f0, f0.float().cpu()], dim=1)

    @torch.inference_mode()
    def step(self, units: list[int], pitch: list[int], style: list[int], final: bool) -> np.ndarray:
        """New final samples (float32, possibly empty) after the settled units grew to ``units``."""
        self._expand_durations(units, final)
        ready = self._ready_frames(final)
        if not final and self.gen.final_samples(ready) - self.emitted < self.chunk * self.model.hop:
            return np.zeros(0, dtype=np.float32)
        idx = np.asarray(self.frame_unit[self.pushed : ready], dtype=np.int64)
        x = self._embed(units, pitch, style, idx)
        excitation = None
        if self.model.source is not None:
            self._predict_f0(units, pitch, style, ready)
            f0 = self.f0[:, self.pushed * self.S : ready * self.S]
            with torch.autocast(device_type=self.dev.type, enabled=False):  # float32, as _vocode_with_source
                excitation = self.model.source.excitation(f0.to(self.dev), phase0=self.phase.to(self.dev))
            self.phase = torch.remainder(self.phase + excitation_phase(f0), 1.0)  # carried to the next frames
        wav = self.gen.push(x, excitation, final)
        self.pushed = ready
        self.emitted += wav.numel()
        return np.ascontiguousarray(wav.float().cpu().numpy(), dtype=np.float32)


def _check_ids(reader: TokenReader, model: UnitHifiGAN, start: int) -> None:
    cfg = model.config
    for name, codes, size in (("hubert", reader.units, cfg.num_units), ("pitch", reader.pitch, cfg.num_pitch),
                              ("style", reader.style, cfg.num_style)):
        bad = [c for c in codes[start:] if c >= size]
        if bad:
            what = "units" if name == "hubert" else f"{name} codes"
            raise UserError(f"'{name}' stream: id {bad[0]} is beyond the vocoder's {size} {what} (0..{size - 1})")


def stream_chunks(reader: TokenReader, streamer: UnitStreamer, pieces, defaults: tuple[int | None, int | None]) -> Iterator[np.ndarray]:
    """Feeds ``pieces`` through ``reader`` and ``streamer``; yields non-empty chunks.

    Raises :class:`UserError` (ids beyond the vocoder's tables, no units, a missing pitch stream
    without a default) when the offending token is read: chunks before it were already yielded.
    """
    if isinstance(pieces, str):
        pieces = [pieces]
    checked = 0
    for piece in pieces:
        reader.feed(piece)
        _check_ids(reader, streamer.model, checked)
        checked = len(reader.units)
        chunk = streamer.step(reader.units, reader.pitch, reader.style, final=False)
        if chunk.size:
            yield chunk
    reader.finish(*defaults)
    _check_ids(reader, streamer.model, checked)
    if not reader.units:
        raise UserError("the token stream has no [HuN] tokens")
    chunk = streamer.step(reader.units, reader.pitch, reader.style, final=True)
    if chunk.size:
        yield chunk
