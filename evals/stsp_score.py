"""Scoring STSP predictions in Meta's file layout, and checking the WAVs a Meta STSP manifest names.

Meta's layout (``spiritlm/eval/eval_stsp.py`` of facebookresearch/spiritlm):

* references: one JSON object a line with ``id`` and the label, ``sentiment`` or ``emotion``
  (``records_emov_*.jsonl``; emotions map to sentiments through :data:`META_EMOTION_TO_SENTIMENT`);
* predictions: one JSON object a line, ``{"id": ..., "pred": "positive"}``.

Meta's rules, which :func:`score_meta` follows (written here from the rules, not from its code):

1. the predictions become a dict keyed by their ``id`` as written (a number stays a number);
   every reference looks its prediction up with ``str(ref["id"])``, so numeric prediction ids
   match nothing;
2. if the reference has the asked label's key, the score is ``pred == ref[label]`` (exact,
   case-sensitive); otherwise, for ``--label sentiment``, the reference's ``emotion`` goes
   through the 6-label map (case-sensitive);
3. a reference whose lookup fails (an id with no prediction, an emotion outside the map, no
   label at all) is reported and **dropped from the denominator**;
4. accuracy = correct / scored references; the script refuses (an assertion) a predictions
   file whose line count differs from the references' or that repeats an id.

Beside it, our stricter count (:func:`score_meta` ``strict``): every reference line is in the
denominator, ids compared as strings on both sides; a reference with no prediction, an emotion
outside the map or no label counts wrong. Labels are compared exactly in both.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from spiritlm.errors import UserError

#: Meta's map of the reference emotions to sentiments (``EMOTION_2_SENTIMENT``, case-sensitive).
META_EMOTION_TO_SENTIMENT = {
    "happy": "positive", "angry": "negative", "sad": "negative", "default": "neutral", "neutral": "neutral", "amused": "positive",
}
LABEL_KINDS = ("sentiment", "emotion")


def read_jsonl(path: str | os.PathLike, flag: str) -> list[tuple[int, Any]]:
    """``(line number, object)`` of every non-blank line; one-line UserError for invalid JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file ({flag})")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))  # jsonl: Meta's STSP predictions and manifests
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg} ({flag})") from None
    return out


def _gold(ref: dict, label: str) -> tuple[str | None, str | None]:
    """``(gold label, None)`` by Meta's rule 2, or ``(None, why it is dropped)``."""
    if label in ref:
        return ref[label], None
    if label == "sentiment" and "emotion" in ref:
        emotion = ref["emotion"]
        if isinstance(emotion, str) and emotion in META_EMOTION_TO_SENTIMENT:
            return META_EMOTION_TO_SENTIMENT[emotion], None
        return None, "out_of_map"
    return None, "no_label"


def score_meta(pred_path: str | os.PathLike, ref_path: str | os.PathLike, label: str = "sentiment") -> dict[str, Any]:
    """Scores a Meta-layout predictions file against Meta-layout references (module docstring).

    Returns:
        ``{"meta": {"accuracy", "correct", "n", "dropped": {"unknown_id", "out_of_map",
        "no_label"}}, "strict": {"accuracy", "correct", "n"}, "meta_refuses": [reasons],
        "references", "predictions", "duplicate_pred_ids", "numeric_pred_ids", "label"}``;
        an accuracy with nothing to count is None.

    Raises:
        UserError: a missing file, invalid JSON, or a prediction line without ``id``/``pred``
            (``path:line``).
    """
    if label not in LABEL_KINDS:
        raise UserError(f"--label must be one of {', '.join(LABEL_KINDS)}, got {label!r} (--label)")
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    preds = read_jsonl(pred_path, "--pred")
    refs = read_jsonl(ref_path, "--ref")
    pred_by_id: dict[Any, Any] = {}
    for lineno, p in preds:
        if not isinstance(p, dict) or "id" not in p or "pred" not in p:
            raise UserError(f"{pred_path}:{lineno}: a prediction line needs 'id' and 'pred' (--pred)")
        pred_by_id[p["id"]] = p["pred"]  # a repeated id: the last line wins, as in a dict
    dup = sum(n - 1 for n in Counter(json.dumps(p["id"]) for _, p in preds).values())
    numeric = sum(1 for _, p in preds if not isinstance(p["id"], str))
    refuses = []
    if len(preds) != len(refs):
        refuses.append(f"{len(preds)} prediction lines for {len(refs)} reference lines")
    if dup:
        refuses.append(f"{dup} repeated prediction ids")
    strict_by_id = {str(k): v for k, v in pred_by_id.items()}
    dropped = Counter()
    meta_correct = meta_n = strict_correct = 0
    for _, ref in refs:
        ref = ref if isinstance(ref, dict) else {}
        gold, why = _gold(ref, label)
        key = str(ref.get("id"))
        has_id = "id" in ref
        # Meta: a missing label or an emotion outside the map fails before the id lookup; any failure drops the line
        if why is not None:
            dropped[why] += 1
        elif not has_id or key not in pred_by_id:
            dropped["unknown_id"] += 1
        else:
            meta_n += 1
            meta_correct += int(pred_by_id[key] == gold)
        # ours: every reference line counts
        if has_id and why is None and key in strict_by_id:
            strict_correct += int(strict_by_id[key] == gold)
    n = len(refs)
    return {
        "label": label,
        "meta": {"accuracy": meta_correct / meta_n if meta_n else None, "correct": meta_correct, "n": meta_n,
                 "dropped": {k: dropped.get(k, 0) for k in ("unknown_id", "out_of_map", "no_label")}},
        "strict": {"accuracy": strict_correct / n if n else None, "correct": strict_correct, "n": n},
        "meta_refuses": refuses,
        "references": n,
        "predictions": len(preds),
        "duplicate_pred_ids": dup,
        "numeric_pred_ids": numeric,
    }


def write_meta_predictions(path: str | os.PathLike, preds: list[tuple[str, str]]) -> None:
    """Writes ``{"id", "pred"}`` lines (Meta's predictions layout) atomically."""
    from spiritlm.atomic import atomic_file

    with atomic_file(path, encoding="utf-8") as f:
        f.write("".join(json.dumps({"id": str(i), "pred": p}) + "\n" for i, p in preds))


def check_manifest_audio(manifest: str | os.PathLike, paths: list[tuple[int, str | None]], *, decode: bool = True) -> int:
    """Checks that every WAV a manifest names exists and decodes, before any generation.

    Args:
        manifest: the manifest (named in the message).
        paths: ``(line number, resolved audio path or None)`` per record that names audio.
        decode: read every file through :func:`spiritlm.audio.load_audio` (else: existence only).

    Returns:
        how many files were checked.

    Raises:
        UserError: one line naming the first missing or undecodable file (its manifest line)
            and how many of the named files fail.
    """
    from spiritlm.audio import AudioError, load_audio

    bad: list[tuple[int, str, str]] = []
    for lineno, path in paths:
        if path is None or not Path(path).is_file():
            bad.append((lineno, str(path), "missing"))
            continue
        if decode:
            try:
                load_audio(path)
            except (AudioError, OSError, ValueError, RuntimeError) as e:
                bad.append((lineno, str(path), f"does not decode ({e})"))
    if bad:
        lineno, path, why = bad[0]
        raise UserError(f"{manifest}:{lineno}: {path} {why}; {len(bad)} of {len(paths)} WAVs the manifest names are missing "
                        "or undecodable (--manifest/--audio_root)")
    return len(paths)


def stsp_score_command(pred: str, ref: str, label: str = "sentiment", out: str | None = None, overwrite: bool = False) -> None:
    """Score a predictions file in Meta's STSP layout with Meta's matching rules, and our stricter count beside it.

    Example: ``spiritlm eval stsp-score --pred pred_s_s.jsonl --ref data/stsp_data/records_emov_test.jsonl --label sentiment``

    Prints ``[stsp-score] meta_accuracy=… meta_n=… dropped=… strict_accuracy=… strict_n=…`` and, when
    Meta's ``eval_stsp.py`` would refuse the file (line counts differ, repeated ids), a note saying why.

    Args:
        pred: predictions JSONL, one ``{"id": …, "pred": …}`` a line.
        ref: references JSONL (Meta's ``records_emov_*.jsonl`` layout: ``id`` and ``sentiment`` or ``emotion``).
        label: ``sentiment`` (emotions mapped as Meta maps them) or ``emotion``.
        out: also write the full result as JSON to this file (atomically).
        overwrite: replace an existing OUT.
    """
    if out:
        from spiritlm.atomic import check_output

        check_output(out, overwrite)  # before scoring: a finished OUT is kept unless --overwrite true
    res = score_meta(pred, ref, label)
    fmt = lambda x: "nan" if x is None else f"{x:.4f}"  # noqa: E731
    m, s = res["meta"], res["strict"]
    dropped = ",".join(f"{k}:{v}" for k, v in m["dropped"].items() if v) or "0"
    print(f"[stsp-score] label={label} meta_accuracy={fmt(m['accuracy'])} meta_n={m['n']} dropped={dropped} "
          f"strict_accuracy={fmt(s['accuracy'])} strict_n={s['n']}", flush=True)
    if res["meta_refuses"]:
        print(f"[stsp-score] note: Meta's eval_stsp.py would refuse these files: {'; '.join(res['meta_refuses'])} "
              "(scored here with the last prediction of a repeated id)", flush=True)
    if res["numeric_pred_ids"]:
        print(f"[stsp-score] note: {res['numeric_pred_ids']} prediction ids are not strings; Meta's rules match them to "
              "nothing (they look up str(reference id)); the strict count compares ids as strings", flush=True)
    if out:
        from spiritlm.atomic import atomic_file

        with atomic_file(out, encoding="utf-8") as f:
            f.write(json.dumps(res, indent=2) + "\n")
