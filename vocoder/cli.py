"""``spiritlm vocoder``: the unit vocoder's commands (``synth``; ``train`` lives in ``vocoder/train.py``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse.typing import NonNegativeInt, PositiveInt

from spiritlm.errors import UserError


def synth(
    vocoder: str,
    units: str,
    out: str,
    speaker: str | None = None,
    dur_pred: bool | None = None,
    style_id: str = "0",
    batch_size: PositiveInt | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    allow_skips: bool = False,
    overwrite: bool = False,
) -> None:
    """Synthesize one WAV file per line of a units JSONL file.

    Example::

        spiritlm vocoder synth --vocoder runs/vocoder --units demo_out/units.jsonl --out wavs/

    Each line is Meta's unit dict (``{"id", "hubert", "pitch", "style", …}``, frame-rate streams,
    as ``spiritlm tokenize`` writes), or ``{"id", "tokens": "[St3][Pi1][Hu5]…"}`` (an LM token
    string). The output is ``OUT/<id>.wav`` (16-bit, the vocoder's sample rate); OUT is built
    under a temporary name and appears when every line is done (an OUT holding
    ``synth_report.json`` is replaced only with ``--overwrite true``). Lines without an ``id`` are
    named ``line<N>``. A bad line (bad JSON, empty or unparsable streams, ids beyond the vocoder's
    tables, an unknown speaker) is reported with its line number and skipped; every other line is
    written, and the command then exits with status 1 unless ``--allow_skips true`` (always when
    every line was skipped). A summary goes to ``OUT/synth_report.json``.

    Args:
        vocoder: vocoder folder: ours (``config.json`` + ``model.safetensors``) or Meta's
            (``generator.pt`` + ``config.json``).
        units: JSONL file of unit dicts or token strings.
        out: output folder.
        speaker: speaker index or name (``speakers.txt``) for every line; default: each line's
            ``speaker`` field if it has one, else speaker 0.
        dur_pred: predict unit durations; default: false for unit dicts, true for token strings.
        style_id: style id (index or name from ``styles.txt``) of a multistyle vocoder.
        batch_size: utterances per forward pass (default: the vocoder's, 1 on a CPU, where
            padded batches cost more per second of audio than one at a time; 16 on a GPU).
        device: ``cpu`` or ``cuda[:N]``.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        allow_skips: exit with status 0 even when some lines were skipped.
        overwrite: replace a finished OUT (one holding synth_report.json).
    """
    from spiritlm.atomic import check_new_output

    src = Path(units)  # flags and files first: a typo costs a second, not the imports of torch
    if not src.is_file():
        raise UserError(f"{src}: file not found (--units)")
    if not Path(vocoder).exists():
        raise UserError(f"{vocoder}: vocoder not found (--vocoder)")
    markers = ("synth_report.json",)
    check_new_output(out, overwrite, markers=markers)
    if not any(line.strip() for line in src.open(encoding="utf-8", errors="replace")):
        raise UserError(f"{src}: no lines (--units)")  # before any folder is made

    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        written, total, audio_s, errors = _synthesize(src, vocoder, out, markers, speaker=speaker, dur_pred=dur_pred,
                                                      style_id=style_id, batch_size=batch_size, device=device,
                                                      overwrite=overwrite)
    print(
        f"spiritlm vocoder synth: wrote {written} of {total} lines to {out} "
        f"({audio_s:.1f} s of audio, {len(errors)} skipped)"
    )
    if errors and not allow_skips:
        raise UserError(f"{src}: {len(errors)} of {total} lines skipped (listed in {Path(out) / 'synth_report.json'}); "
                        "pass --allow_skips true to accept")


def _synthesize(src: Path, vocoder: str, out: str, markers: tuple[str, ...], *, speaker: str | None, dur_pred: bool | None,
                style_id: str, batch_size: int | None, device: str, overwrite: bool) -> tuple[int, int, float, list[dict[str, Any]]]:
    """:func:`synth` after its checks: ``(written, lines, audio seconds, errors)``; OUT published."""
    from tqdm import tqdm

    from spiritlm.atomic import atomic_dir
    from spiritlm.audio import write_audio

    from .api import Vocoder

    voc = Vocoder.from_pretrained(vocoder, device=device)
    if speaker is not None:  # one error for the flag, not one per line
        voc._index(int(speaker) if speaker.strip().isdigit() else speaker, voc.speakers, voc.config.num_speakers, "speaker")
    errors: list[dict[str, Any]] = []
    jobs: list[tuple[str, dict[str, Any]]] = []  # (id, prepared input)
    seen: set[str] = set()
    total = 0
    with open(src, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            try:
                uid, item, line_speaker = _parse_line(line, lineno)
                if uid in seen:
                    raise UserError(f"duplicate id {uid!r}")
                spk = speaker if speaker is not None else (line_speaker if line_speaker is not None else 0)
                prepared = voc.prepare(item, speaker=spk, dur_pred=dur_pred, style_id=style_id)
            except UserError as exc:
                msg = f"{src}:{lineno}: {exc}"
                print(f"spiritlm vocoder synth: skipped {msg}", file=sys.stderr)
                errors.append({"line": lineno, "error": str(exc)})
                continue
            seen.add(uid)
            jobs.append((uid, prepared))
    if total == 0:
        raise UserError(f"{src}: no lines (--units)")

    if not jobs:
        raise UserError(f"{src}: every line was skipped ({len(errors)} bad lines; first: line {errors[0]['line']}: {errors[0]['error']})")

    order = sorted(range(len(jobs)), key=lambda i: (jobs[i][1]["dur_pred"], jobs[i][1]["units"].size))
    written = 0
    audio_s = 0.0
    start = time.perf_counter()
    batch_size = batch_size or voc.default_batch_size
    with atomic_dir(out, overwrite, markers=markers) as out_dir:
        with tqdm(total=len(jobs), desc="synth", unit="utt", disable=not jobs) as bar:
            for b in range(0, len(order), batch_size):
                chunk = [jobs[i] for i in order[b : b + batch_size]]
                wavs = voc.synthesize_prepared([p for _, p in chunk], batch_size=batch_size)
                for (uid, _), wav in zip(chunk, wavs):
                    write_audio(out_dir / f"{uid}.wav", wav, voc.sample_rate, subtype="PCM_16", format="WAV")
                    written += 1
                    audio_s += wav.size / voc.sample_rate
                bar.update(len(chunk))
        elapsed = time.perf_counter() - start
        report = {
            "units": str(src), "vocoder": str(vocoder), "lines": total, "written": written, "skipped": len(errors),
            "filled": sum(1 for _, p in jobs if p.get("filled")),  # lines without pitch/style: the vocoder's default codes
            "audio_seconds": round(audio_s, 3), "synthesis_seconds": round(elapsed, 3),
            "realtime_factor": round(audio_s / elapsed, 2) if elapsed > 0 and written else None,
            "errors": errors,
        }
        (out_dir / "synth_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return written, total, audio_s, errors


def _parse_line(line: str, lineno: int) -> tuple[str, Any, Any]:
    """One JSONL line → ``(id, unit dict or token string, the line's speaker or None)``."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(rec, str):
        return f"line{lineno:06d}", rec, None
    if not isinstance(rec, dict):
        raise UserError(f"expected a JSON object, got {type(rec).__name__}")
    uid = str(rec.get("id", f"line{lineno:06d}"))
    if not uid or "/" in uid or "\\" in uid or uid.startswith(".") or "\0" in uid:
        raise UserError(f"id {uid!r} cannot be a file name")
    if "hubert" in rec:
        item: Any = {k: rec[k] for k in ("hubert", "pitch", "style") if k in rec}
    elif isinstance(rec.get("tokens"), str):
        item = rec["tokens"]
    else:
        raise UserError("no 'hubert' stream and no 'tokens' string")
    return uid, item, rec.get("speaker")


# name -> command; train and eval are thin wrappers in vocoder/train_cli.py (torch loads when they run)
from .train_cli import evaluate as _evaluate  # noqa: E402
from .train_cli import train as _train  # noqa: E402

COMMANDS: dict[str, Any] = {
    "synth": synth,
    "train": _train,
    "eval": _evaluate,
}
