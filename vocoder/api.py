"""The inference API of the unit vocoder: :class:`Vocoder` (load, synthesize, batch, save, export).

Two kinds of input::

    voc = Vocoder.from_pretrained("runs/vocoder")          # ours, or Meta's hifigan_spiritlm_* folder
    wav = voc.synthesize({"hubert": "12 12 7 7 7", "pitch": "3 3 9", "style": "5"})  # frame rate
    wav = voc.synthesize("[St5][Pi3][Hu12][Hu7][Pi9][Hu4]")                       # LM tokens

* Meta's **unit dict**: space-separated streams at their own frame rates (HuBERT 25 Hz, pitch
  12.5 Hz, style 1 Hz), not deduplicated; each unit gives 640 samples. ``dur_pred`` defaults to
  ``False``; with ``dur_pred=True`` the dict is taken as one entry per deduplicated unit, pitch
  and style included (what :func:`spiritlm.formats.string_to_units` returns).
* a **token string** as the LM emits it: deduplicated, turned into per-unit streams by
  ``string_to_units``; ``dur_pred`` defaults to ``True`` (each unit lasts its predicted duration).

Output: float32 mono waveform at ``sample_rate`` (16 kHz), 1-D numpy array.

Our own folder::

    DIR/config.json        VocoderConfig.to_dict() ({"format": "spiritlm-vocoder", ...})
    DIR/model.safetensors  UnitHifiGAN state dict (weight norm kept or folded)
    DIR/speakers.txt       speaker names, one per line, in table order (optional)
    DIR/styles.txt         style-id names (optional)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from spiritlm.errors import UserError
from spiritlm.formats import MOST_COMMON_STYLES, SPEECH_TOKEN_RE, string_to_units
from spiritlm.tensors import pad_batch

from .config import FORMAT, VocoderConfig
from .meta import _atomic, _load_state, export_meta, is_meta_dir, load_meta, read_names, write_names
from .model import UnitHifiGAN, upsample_codes
from .streaming import TokenReader, UnitStreamer, stream_chunks

__all__ = ["Vocoder", "UnitsInput", "save_pretrained", "load_pretrained"]

#: a unit dict (``{"hubert": "1 2 3", "pitch": …, "style": …}``) or an LM token string
UnitsInput = Union[dict, str]

_STREAMS = ("hubert", "pitch", "style")


def save_pretrained(
    model: UnitHifiGAN,
    path: str | os.PathLike,
    speakers: Sequence[str] | None = None,
    styles: Sequence[str] | None = None,
) -> None:
    """Writes our vocoder folder (config.json, model.safetensors, names files), each file atomically."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(folder / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    if speakers is not None:
        write_names(folder / "speakers.txt", list(speakers))
    if styles is not None:
        write_names(folder / "styles.txt", list(styles))
    # config last: a folder with a config.json is complete
    _atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n"))


def load_pretrained(path: str | os.PathLike) -> tuple[UnitHifiGAN, list[str] | None, list[str] | None]:
    """Reads our vocoder folder onto the CPU: ``(model in eval mode, speakers, styles)``."""
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise UserError(f"{p}: not found (a vocoder folder holds config.json and model.safetensors, or Meta's generator.pt) (--vocoder)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        config = VocoderConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{cfg_path}: not a vocoder config ({exc}) (--vocoder)") from None
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"{weights}: cannot read ({str(exc).splitlines()[0][:200]}) (--vocoder)") from None
    model = UnitHifiGAN(config)
    if "conv_pre.conv.weight" in state:
        model.remove_weight_norm()  # saved after folding
    _load_state(model, state, str(weights))
    return model.eval(), read_names(folder / "speakers.txt"), read_names(folder / "styles.txt")


class Vocoder:
    """Unit dicts or LM token strings → 16 kHz waveforms.

    Args:
        model: the generator (put in eval mode).
        speakers: names of the speaker table's rows (``speakers.txt``), for ``speaker="name"``.
        styles: names of the style-id table's rows (``styles.txt``; Meta's base vocoder).
        fold_weight_norm: fold weight norm into the weights (faster inference, same audio).

    Attributes:
        model: the :class:`UnitHifiGAN`.
        config: its :class:`VocoderConfig`.
        sample_rate: output sample rate in Hz.
    """

    def __init__(
        self,
        model: UnitHifiGAN,
        speakers: Sequence[str] | None = None,
        styles: Sequence[str] | None = None,
        *,
        fold_weight_norm: bool = True,
    ) -> None:
        self.model = model.eval()
        if fold_weight_norm:
            self.model.remove_weight_norm()
        self.config = model.config
        self.sample_rate = int(model.config.sample_rate)
        self.speakers = list(speakers) if speakers is not None else None
        self.styles = list(styles) if styles is not None else None

    # -- loading / saving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, fold_weight_norm: bool = True) -> "Vocoder":
        """Loads our folder (``config.json`` + ``model.safetensors``) or Meta's (``generator.pt``).

        ``path`` may also be Meta's ``generator.pt`` itself. The format is detected from the files.
        """
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: vocoder not found (--vocoder)")
        if (p.is_file() and p.suffix == ".pt") or (p.is_dir() and is_meta_dir(p)):
            model, speakers, styles = load_meta(p)
        else:
            model, speakers, styles = load_pretrained(p)
        voc = cls(model, speakers, styles, fold_weight_norm=fold_weight_norm)
        return voc.to(device)

    def to(self, device: str | torch.device) -> "Vocoder":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, path: str | os.PathLike) -> None:
        """Writes our folder format (see the module docstring)."""
        save_pretrained(self.model, path, self.speakers, self.styles)

    def export_meta(self, path: str | os.PathLike) -> None:
        """Writes Meta's layout (``config.json``, ``generator.pt``, ``speakers.txt``, ``styles.txt``)."""
        export_meta(self.model, path, self.speakers, self.styles)

    # -- synthesis ---------------------------------------------------------------------------------

    def synthesize(
        self,
        units: UnitsInput,
        *,
        speaker: int | str = 0,
        dur_pred: bool | None = None,
        style_id: int | str = 0,
    ) -> np.ndarray:
        """One utterance → float32 waveform ``(samples,)`` at :attr:`sample_rate`.

        Args:
            units: a unit dict (frame-rate streams; see the module docstring) or an LM token
                string (``"[St3][Pi1][Hu5][Hu7]…"``).
            speaker: row of the speaker table, or a name from ``speakers.txt``.
            dur_pred: predict unit durations; default ``False`` for dicts, ``True`` for strings.
            style_id: row of the style-id table (Meta's base vocoder), or a name from ``styles.txt``.

        Without duration prediction the output has ``640 × units`` samples.

        Raises:
            UserError: empty or unparsable streams, ids beyond the vocoder's tables, an unknown
                speaker or style, pitch/style streams that do not fit the units.
        """
        return self.synthesize_batch([units], speaker=speaker, dur_pred=dur_pred, style_id=style_id)[0]

    def decode(
        self, units: UnitsInput, *, speaker: int | str = 0, dur_pred: bool | None = None, style_id: int | str = 0
    ) -> np.ndarray:
        """:meth:`synthesize` with the defaults of Meta's ``SpiritLMTokenizer.decode``.

        This is the ``VocoderLike`` protocol of :class:`spiritlm.generation.SpiritLM`, which
        passes the per-unit dict ``string_to_units`` makes of a generated token string. So, as
        in Meta's decoder, ``dur_pred=None`` means: predict durations (when the vocoder has a
        duration predictor) unless the dict's pitch stream does not have one code per unit,
        which marks frame-rate streams (resynthesis). Token strings: as :meth:`synthesize`.
        """
        if dur_pred is None and isinstance(units, dict):
            hubert, pitch = units.get("hubert"), units.get("pitch")
            per_unit = pitch is None or len(_as_list(pitch)) == len(_as_list(hubert))
            dur_pred = self.model.duration_predictor is not None and per_unit
        return self.synthesize(units, speaker=speaker, dur_pred=dur_pred, style_id=style_id)

    @torch.inference_mode()
    def synthesize_batch(
        self,
        items: Sequence[UnitsInput],
        *,
        speaker: int | str | Sequence[int | str] = 0,
        dur_pred: bool | None = None,
        style_id: int | str | Sequence[int | str] = 0,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Several utterances, run as right-padded batches; each output equals :meth:`synthesize`'s.

        Args:
            items: unit dicts and/or token strings.
            speaker: one speaker for all, or one per item.
            dur_pred: as in :meth:`synthesize` (``None``: per item, by its kind).
            style_id: one for all, or one per item.
            batch_size: utterances per forward pass (sorted by length to limit padding); None:
                :meth:`default_batch_size` (1 on a CPU, where padded batches cost more per
                second of audio than one at a time; 16 on a GPU).

        Returns:
            One float32 waveform per item, in order.
        """
        items = list(items)
        speakers = _per_item(speaker, len(items), "speaker")
        style_ids = _per_item(style_id, len(items), "style_id")
        prepared = [
            self.prepare(u, speaker=s, dur_pred=dur_pred, style_id=y) for u, s, y in zip(items, speakers, style_ids)
        ]
        return self.synthesize_prepared(prepared, batch_size=batch_size)

    @torch.inference_mode()
    def synthesize_prepared(self, prepared: Sequence[dict[str, Any]], *, batch_size: int | None = None) -> list[np.ndarray]:
        """Runs inputs already checked by :meth:`prepare` (batch jobs prepare each item first,
        so that one bad item is reported and skipped without losing the others)."""
        if batch_size is None:
            batch_size = self.default_batch_size
        out: list[np.ndarray | None] = [None] * len(prepared)
        for mode in (False, True):
            idx = sorted((i for i, p in enumerate(prepared) if p["dur_pred"] == mode), key=lambda i: len(prepared[i]["units"]))
            for start in range(0, len(idx), max(1, batch_size)):
                chunk = idx[start : start + batch_size]
                for i, wav in zip(chunk, self._run([prepared[i] for i in chunk], mode)):
                    out[i] = wav
        return out  # type: ignore[return-value]

    @property
    def default_batch_size(self) -> int:
        """Utterances per forward pass when none is given: 1 on a CPU, 16 elsewhere.

        On a CPU a padded batch does the work of its longest row for every row plus the masking
        (``benchmarks/bench_vocoder.py``: batches of 8 mixed lengths ran at 0.23× the speed of one
        at a time); a GPU has the parallelism to spare.
        """
        return 1 if self.device.type == "cpu" else 16

    # -- streaming ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def stream(
        self,
        tokens: Iterable[str] | str,
        *,
        speaker: int | str = 0,
        style: int | str = 0,
        dur_pred: bool = True,
        chunk_frames: int = 25,
    ) -> Iterator[np.ndarray]:
        """A growing stream of speech tokens → float32 waveform chunks at :attr:`sample_rate`.

        Args:
            tokens: the LM's speech tokens as they are decoded, one per item (``"[Hu12]"``,
                ``"[Pi3]"``, ``"[St7]"``); items may also hold several tokens or a token's
                pieces, and other text is ignored (as :meth:`synthesize` does).
            speaker: row of the speaker table, or a name from ``speakers.txt``.
            style: row of the style-id table (Meta's base vocoder; :meth:`synthesize`'s
                ``style_id``), or a name from ``styles.txt``.
            dur_pred: predict unit durations (deduplicated LM units, the default); False: every
                unit lasts one frame (frame-rate units).
            chunk_frames: frames (640 samples, 40 ms) per chunk at least, except the last: smaller
                chunks come sooner; every sample is computed once whatever the chunk size (the
                generator keeps each layer's state), small chunks add per-call overhead.

        Yields:
            1-D float32 chunks whose concatenation is :meth:`synthesize` of the concatenated
            tokens (to float rounding; ``tests/test_vocoder_stream.py``). A chunk is yielded as
            soon as its frames' neighbourhoods (duration predictor, F0 head, generator receptive
            field) are known; see :mod:`spiritlm.vocoder.streaming`.

        Raises:
            UserError: as :meth:`synthesize` (ids beyond the tables, unknown speaker, no units, no
                pitch stream without a default), raised when the offending token is read.
        """
        cfg = self.config
        spk = self._index(speaker, self.speakers, cfg.num_speakers, "speaker")
        sty = self._index(style, self.styles, cfg.num_style_ids, "style")
        if dur_pred and self.model.duration_predictor is None:
            raise UserError("this vocoder has no duration predictor: give frame-rate units (--dur_pred false)")
        reader = TokenReader(has_pitch=bool(cfg.num_pitch), has_style=bool(cfg.num_style))
        streamer = UnitStreamer(self.model, speaker=spk, style_id=sty, dur_pred=dur_pred, chunk_frames=chunk_frames)
        defaults = (self.default_code("pitch") if cfg.num_pitch else None, self.default_code("style") if cfg.num_style else None)
        yield from stream_chunks(reader, streamer, tokens, defaults)

    # -- input preparation -----------------------------------------------------------------------

    def prepare(
        self, units: UnitsInput, *, speaker: int | str = 0, dur_pred: bool | None = None, style_id: int | str = 0
    ) -> dict[str, Any]:
        """Parses and checks one input: ``{"units", "pitch", "style" (per-unit int arrays or None),
        "speaker", "style_id" (ints), "dur_pred" (bool), "filled" (names of the streams that were
        absent and filled with :meth:`default_code`)}``. Raises :class:`UserError`."""
        cfg = self.config
        if isinstance(units, str):
            streams = self._parse_string(units)
            dur_pred = True if dur_pred is None else bool(dur_pred)
            aligned = True
        elif isinstance(units, dict):
            streams = {k: _parse_stream(units[k], k) for k in _STREAMS if k in units and units[k] is not None}
            dur_pred = False if dur_pred is None else bool(dur_pred)
            aligned = dur_pred
        else:
            raise UserError(f"units must be a unit dict or a token string, got {type(units).__name__}")
        hubert = streams.get("hubert")
        if hubert is None:
            raise UserError("no 'hubert' stream in the units")
        if hubert.size == 0:
            raise UserError("empty 'hubert' stream (no units)")
        _check_range(hubert, cfg.num_units, "hubert", "units")
        if dur_pred and self.model.duration_predictor is None:
            raise UserError("this vocoder has no duration predictor: give frame-rate units (--dur_pred false)")
        T = hubert.size
        per_unit: dict[str, np.ndarray | None] = {"pitch": None, "style": None}
        filled: list[str] = []
        for name, size, ratio in (("pitch", cfg.num_pitch, cfg.pitch_ratio), ("style", cfg.num_style, cfg.style_ratio)):
            if not size:
                continue  # a base vocoder ignores expressive streams, as Meta's does
            codes = streams.get(name)
            if codes is None:
                # a stream that is absent (an LM output without [Pi…]/[St…] tokens, units of a
                # base tokenizer): filled with the vocoder's default code, one per unit
                default = self.default_code(name)
                if default is None:
                    raise UserError(
                        f"no '{name}' stream (no [{name[:2].capitalize()}N] tokens) and this vocoder stores no "
                        f"default_{name} code to fill in (set one in its config.json; `spiritlm vocoder train` stores "
                        f"the most frequent training code)"
                    )
                per_unit[name] = np.full(T, default, dtype=np.int64)
                filled.append(name)
                continue
            if codes.size == 0:
                raise UserError(f"this vocoder needs a non-empty '{name}' stream")
            _check_range(codes, size, name, f"{name} codes")
            if aligned:
                if codes.size != T:
                    raise UserError(
                        f"'{name}' has {codes.size} codes for {T} units; with duration prediction every unit needs "
                        f"its own {name} code (frame-rate streams: --dur_pred false)"
                    )
                per_unit[name] = codes
            else:
                if abs(codes.size * ratio - T) > ratio:  # Meta's tolerance: one code either way
                    raise UserError(
                        f"'{name}' has {codes.size} codes for {T} units at {ratio} units per code "
                        f"(expected about {T / ratio:.0f}; deduplicated streams need --dur_pred true)"
                    )
                per_unit[name] = upsample_codes(torch.from_numpy(codes)[None], ratio, T)[0].numpy()
        return {
            "units": hubert,
            "pitch": per_unit["pitch"],
            "style": per_unit["style"],
            "speaker": self._index(speaker, self.speakers, cfg.num_speakers, "speaker"),
            "style_id": self._index(style_id, self.styles, cfg.num_style_ids, "style"),
            "dur_pred": dur_pred,
            "filled": filled,
        }

    def default_code(self, name: str) -> int | None:
        """The code filled in for a missing ``"pitch"`` or ``"style"`` stream (None: refused).

        The config's ``default_pitch`` / ``default_style`` (the most frequent training code,
        stored by ``spiritlm vocoder train``). Without a stored style: the first of Meta's common
        styles (71, 68, 98) that fits the table, else 0 — Meta's decoder picks one of the three
        at random for a string with pitch but no style. Without a stored pitch: None (Meta's
        decoder has no pitch fallback and fails).
        """
        cfg = self.config
        if name == "pitch":
            return None if not cfg.num_pitch or cfg.default_pitch is None else int(cfg.default_pitch)
        if name == "style":
            if not cfg.num_style:
                return None
            if cfg.default_style is not None:
                return int(cfg.default_style)
            return next((st for st in MOST_COMMON_STYLES if st < cfg.num_style), 0)
        raise ValueError(f"no default for stream {name!r}")

    def _parse_string(self, s: str) -> dict[str, np.ndarray]:
        if not SPEECH_TOKEN_RE.search(s):
            raise UserError("no speech tokens ([HuN], [PiN], [StN]) in the token string")
        # Meta's decoder picks one of its most common styles at random when a string has pitch
        # but no style token; here every missing stream is filled by prepare() with
        # default_code() (deterministic, within this vocoder's tables).
        units = string_to_units(s, fallback_style=0)
        if not units["hubert"]:
            raise UserError("the token string has no [HuN] tokens")
        if not any(m.group(1) == "St" for m in SPEECH_TOKEN_RE.finditer(s)):
            units.pop("style", None)
        return {k: _parse_stream(v, k) for k, v in units.items()}

    @staticmethod
    def _index(value: int | str | None, names: list[str] | None, size: int, what: str) -> int:
        if value is None:
            return 0
        if isinstance(value, str):
            if names is not None and value in names:
                return names.index(value)
            if not value.strip().lstrip("-").isdigit():
                known = f"; known: {', '.join(names[:8])}{' …' if len(names) > 8 else ''}" if names else f" (the vocoder has no {what}s.txt)"
                raise UserError(f"unknown {what} {value!r}{known} (--{what})")
            value = int(value)
        value = int(value)
        if size == 0:
            if value != 0:
                raise UserError(f"this vocoder has no {what} table; {what} {value} cannot be used (--{what})")
            return 0
        if not 0 <= value < size:
            raise UserError(f"{what} {value} is beyond the vocoder's {size} {what}s (--{what})")
        return value

    # -- running ---------------------------------------------------------------------------------

    def _run(self, batch: list[dict[str, Any]], dur_pred: bool) -> list[np.ndarray]:
        dev = self.device
        lengths = torch.tensor([p["units"].size for p in batch], dtype=torch.long)
        T = int(lengths.max())

        def pad(key: str) -> torch.Tensor | None:
            if batch[0][key] is None:
                return None
            return pad_batch([p[key] for p in batch], dtype=torch.long, width=T)[0].to(dev)

        wav, samples = self.model.infer(
            pad("units"),
            pad("pitch"),
            pad("style"),
            torch.tensor([p["speaker"] for p in batch], device=dev),
            torch.tensor([p["style_id"] for p in batch], device=dev),
            lengths=lengths.to(dev),
            dur_pred=dur_pred,
        )
        wav = wav.float().cpu().numpy()
        return [np.ascontiguousarray(wav[b, : int(n)], dtype=np.float32) for b, n in enumerate(samples.tolist())]


def _parse_stream(value: Any, name: str) -> np.ndarray:
    """A space-separated string or a list of ints → int64 array; UserError otherwise."""
    if isinstance(value, str):
        parts = value.split()
        try:
            return np.array([int(x) for x in parts], dtype=np.int64)
        except ValueError:
            bad = next(x for x in parts if not x.lstrip("-").isdigit())
            raise UserError(f"'{name}' stream: {bad[:20]!r} is not an integer") from None
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"'{name}' stream: expected integers, got {arr.dtype}")
        return arr.astype(np.int64).reshape(-1)
    raise UserError(f"'{name}' stream: expected a space-separated string of integers, got {type(value).__name__}")


def _check_range(codes: np.ndarray, size: int, name: str, what: str) -> None:
    bad = codes[(codes < 0) | (codes >= size)]
    if bad.size:
        raise UserError(f"'{name}' stream: id {int(bad[0])} is beyond the vocoder's {size} {what} (0..{size - 1})")


def _per_item(value: Any, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UserError(f"{len(value)} {what} values for {n} items")
        return list(value)
    return [value] * n


def _as_list(value: Any) -> list:
    """A stream as a list of its items (for counting; parsing happens in :meth:`Vocoder.prepare`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return list(np.asarray(value).reshape(-1))
