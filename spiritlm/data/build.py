"""Builds a token directory from a manifest and units: documents -> token ids -> shards.

Utterances (or groups of them, ``InterleaveConfig.group_words``) are cut into chunks of
``chunk_size`` and processed by a pool of ``workers``
processes (fork); results are written in manifest order, so the shards depend on the inputs,
the tokenizer, the interleaving config and the seed only, never on the number of workers.
The directory is built under a temporary name and renamed when complete (:mod:`spiritlm.atomic`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.data.shards import INDEX_FILE, SUMMARY_FILE, ShardWriter, token_dtype, write_index
from spiritlm.errors import UserError
from spiritlm.formats import TEXT_MARKER, UnitFormatError
from spiritlm.interleave import SUBSETS, InterleaveConfig, group_utterances, make_group_documents
from spiritlm.units_jsonl import check_unit_ranges, find_units, read_units
from spiritlm.text_tokenizer import DEFAULT_PAD_MULTIPLE, SpiritTextTokenizer

TOKENIZER_FILE = "tokenizer.model"
#: units per stream the build's units file uses: ``{"hubert": N, "pitch": P, "style": S}``;
#: generation keeps its speech vocabulary to these (see ``spiritlm.generation``)
SPEECH_UNITS_FILE = "speech_units.json"


class DataBuildError(UserError, ValueError):
    """A build that cannot go on (no utterances, unusable tokenizer, nothing interleaved)."""


def read_manifest_utterances(path: str | os.PathLike, split: str | None = None) -> list:
    """The manifest's utterances (``spiritlm.corpus.manifest.read_manifest``), those of ``split`` only when given."""
    from spiritlm.corpus.manifest import read_manifest

    utts = list(read_manifest(path))
    if split is not None:
        utts = [u for u in utts if getattr(u, "split", None) == split]
    return utts


def make_tokenizer(
    out_dir: str | os.PathLike,
    texts: list[str] | None,
    text_tokenizer: str | os.PathLike | None,
    expressive: bool,
    vocab_size: int = 1000,
    num_hubert: int = 501,
    pad_to_multiple: int = DEFAULT_PAD_MULTIPLE,
) -> tuple[SpiritTextTokenizer, str]:
    """The build's tokenizer and the path recorded in the index.

    With ``text_tokenizer`` an extended model is loaded as is, and a text-only model (e.g.
    LLaMA-2's ``tokenizer.model``) is extended and saved in ``out_dir``; without it a BPE model
    is trained on ``texts`` and saved in ``out_dir``.
    """
    n_pitch, n_style = (64, 100) if expressive else (0, 0)
    out = Path(out_dir) / TOKENIZER_FILE
    if text_tokenizer is not None:
        try:
            tok = SpiritTextTokenizer.load(text_tokenizer)
        except ValueError:  # not extended yet
            tok = SpiritTextTokenizer.from_base_model(text_tokenizer, num_hubert, n_pitch, n_style, pad_to_multiple)
            tok.save(out)
            return tok, TOKENIZER_FILE
        if expressive and not tok.expressive:
            raise ValueError(f"{text_tokenizer}: an expressive build needs pitch and style tokens in the tokenizer")
        return tok, str(Path(text_tokenizer).resolve())
    if not texts:
        raise ValueError("make_tokenizer: no text to train the text tokenizer on")
    tok = SpiritTextTokenizer.train(texts, vocab_size, num_hubert, n_pitch, n_style, pad_to_multiple)
    tok.save(out)
    return tok, TOKENIZER_FILE


# -- workers ----------------------------------------------------------------------------------

# Set in the parent before the pool forks: workers inherit the inputs instead of receiving them
# pickled, and receive only (start, stop) ranges.
_W: dict[str, Any] = {}


def _init_worker(model: bytes, cfg: InterleaveConfig, seed: int) -> None:
    _W["tok"] = SpiritTextTokenizer(model)
    _W["cfg"] = cfg
    _W["seed"] = seed


def _process_range(bounds: tuple[int, int]) -> dict[str, Any]:
    """Documents and token ids of the utterance groups ``_W["groups"][start:stop]``.

    Returns ``{"docs": {subset: (doc ids, lengths int64 [n], tokens [sum(lengths)])},
    "skipped": [(subset, reason)], "counts": {subset: {name: int}}}``.
    """
    tok: SpiritTextTokenizer = _W["tok"]
    cfg: InterleaveConfig = _W["cfg"]
    dtype = token_dtype(tok.vocab_size)
    speech_mask = tok.speech_token_mask()
    docs: dict[str, tuple[list[str], list[int], list[np.ndarray]]] = defaultdict(lambda: ([], [], []))
    skipped: list[tuple[str, str]] = []
    counts: dict[str, Counter] = defaultdict(Counter)
    for members in _W["groups"][bounds[0] : bounds[1]]:
        made, skip = make_group_documents(members, cfg, _W["seed"])
        skipped += skip
        if any(doc.subset == "interleaved" for doc in made):
            # members left out of the group's interleaved document each counted one skip
            counts["interleaved"]["utterances"] += len(members) - sum(1 for sub, _ in skip if sub == "interleaved")
        for doc in made:
            try:
                ids = np.asarray(tok.encode(doc.text), dtype=np.int64)
            except KeyError as e:
                raise ValueError(f"{doc.subset} document of {doc.id}: {e.args[0]} (units and tokenizer disagree?)") from None
            ids_list, lengths, arrays = docs[doc.subset]
            ids_list.append(doc.id)
            lengths.append(len(ids))
            arrays.append(ids.astype(dtype))
            c = counts[doc.subset]
            n_speech = int(speech_mask[ids].sum())
            n_marker = int(((ids == tok.text_marker_id) | (ids == tok.speech_marker_id)).sum())
            c["documents"] += 1
            c["tokens"] += len(ids)
            c["speech_tokens"] += n_speech
            c["marker_tokens"] += n_marker
            c["text_tokens"] += len(ids) - n_speech - n_marker
    packed = {
        subset: (ids_list, np.asarray(lengths, dtype=np.int64), np.concatenate(arrays) if arrays else np.zeros(0, dtype))
        for subset, (ids_list, lengths, arrays) in docs.items()
    }
    return {"docs": packed, "skipped": skipped, "counts": {k: dict(v) for k, v in counts.items()}}


def read_extra_text(path: str | os.PathLike) -> list[str]:
    """Text-only documents, one a line (blank lines skipped); raises naming the file if unreadable."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read extra text ({e})") from None
    docs = [line.strip() for line in lines if line.strip()]
    if not docs:
        raise ValueError(f"{path}: no text documents")
    return docs


def _extra_text_documents(tok: SpiritTextTokenizer, texts: list[str]) -> dict[str, Any]:
    """Text-subset documents ``[Text] + line`` for :func:`build_dataset`'s ``extra_text``, ids ``extra:<line>``."""
    dtype = token_dtype(tok.vocab_size)
    arrays = [np.asarray(tok.encode(TEXT_MARKER + t), dtype=dtype) for t in texts]
    lengths = np.asarray([len(a) for a in arrays], dtype=np.int64)
    n_tokens = int(lengths.sum())
    counts = {"documents": len(texts), "tokens": n_tokens, "speech_tokens": 0,
              "marker_tokens": len(texts), "text_tokens": n_tokens - len(texts)}
    docs = ([f"extra:{i}" for i in range(len(texts))], lengths, np.concatenate(arrays))
    return {"docs": {"text": docs}, "skipped": [], "counts": {"text": counts}}


# -- build --------------------------------------------------------------------------------------


def build_dataset(
    manifest: str | os.PathLike,
    units: str | os.PathLike,
    out: str | os.PathLike,
    *,
    interleave: InterleaveConfig | None = None,
    text_tokenizer: str | os.PathLike | None = None,
    extra_text: str | os.PathLike | None = None,
    split: str | None = None,
    workers: int = 2,
    seed: int = 0,
    vocab_size: int = 1000,
    pad_to_multiple: int = DEFAULT_PAD_MULTIPLE,
    shard_tokens: int = 1 << 26,
    chunk_size: int = 256,
    progress: bool = False,
    overwrite: bool = False,
    allow_skips: bool = True,
) -> dict[str, Any]:
    """Builds ``out`` (index, shards, ``summary.json``, ``speech_units.json``, tokenizer); returns the summary.

    The directory is built under a temporary name next to ``out`` and renamed when complete: a
    failed build leaves nothing behind, and an existing ``out`` is replaced only with
    ``overwrite`` (and only once the new build succeeded). ``group_words=-1`` in ``interleave``
    picks the grouping from the corpus (:func:`auto_group_words`).

    Args: see ``spiritlm data build --help`` (:func:`spiritlm.data.cli.build`); with
    ``allow_skips=False`` a build that gives no speech or no interleaved document is an error.
    """
    from spiritlm.atomic import atomic_dir, check_new_output

    markers = (INDEX_FILE, SUMMARY_FILE)  # only a data directory is ever replaced
    check_new_output(out, overwrite, markers=markers)  # before the slow parts
    out = Path(out)
    with atomic_dir(out, overwrite, markers=markers) as tmp:
        return _build(manifest, units, out, tmp, interleave, text_tokenizer, extra_text, split, workers, seed,
                      vocab_size, pad_to_multiple, shard_tokens, chunk_size, progress, allow_skips)


def auto_group_words(utterances: list, cfg: InterleaveConfig) -> int:
    """``group_words`` suited to a corpus: 0 (each utterance alone, Meta's setting) when the median
    utterance holds at least ``text_span_min + speech_span_min`` words, else
    ``text_span_max + speech_span_max`` (groups long enough for several spans). Utterances without
    word times (an imported corpus not aligned yet) are not interleaved and do not count."""
    words = sorted(len(u.words) for u in utterances if u.words)
    if not words or words[len(words) // 2] >= cfg.text_span_min + cfg.speech_span_min:
        return 0
    return cfg.text_span_max + cfg.speech_span_max


def speech_units_of(unit_map: dict[str, dict], expressive: bool) -> dict[str, int]:
    """Units per stream a units file uses (largest id + 1; 0 for a stream left out of the build)."""
    seen = {id(rec): rec for rec in unit_map.values()}.values()
    out = {}
    for stream in ("hubert", "pitch", "style"):
        if stream != "hubert" and not expressive:
            out[stream] = 0
            continue
        top = -1
        for rec in seen:
            value = rec.get(stream)
            if value:
                ids = value.split() if isinstance(value, str) else value
                top = max(top, max((int(v) for v in ids), default=-1))
        out[stream] = top + 1
    return out


def _build(manifest, units, out: Path, tmp: Path, interleave, text_tokenizer, extra_text, split, workers, seed,
           vocab_size, pad_to_multiple, shard_tokens, chunk_size, progress, allow_skips) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg = interleave or InterleaveConfig()
    utts = read_manifest_utterances(manifest, split)
    if not utts:
        raise DataBuildError(f"{manifest}: no utterances" + (f" in split {split!r} (--split)" if split else ""))
    if cfg.group_words < 0:
        cfg = replace(cfg, group_words=auto_group_words(utts, cfg))
    unit_map = read_units(units)
    extra = read_extra_text(extra_text) if extra_text else []
    tok, tok_path = _build_tokenizer(units, out, tmp, [u.text for u in utts] + extra, text_tokenizer, cfg.expressive,
                                     vocab_size, pad_to_multiple)
    t_tok = time.perf_counter()

    pairs = [(u, find_units(unit_map, u)) for u in utts]
    groups = [[pairs[i] for i in g] for g in group_utterances(utts, cfg.group_words)]
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in SUBSETS}
    skipped: dict[str, Counter] = {s: Counter() for s in SUBSETS}
    counts: dict[str, Counter] = {s: Counter() for s in SUBSETS}

    def consume(result: dict[str, Any]) -> None:
        for subset, (doc_ids, lengths, flat) in result["docs"].items():
            ends = np.cumsum(lengths)
            for doc_id, a, b in zip(doc_ids, ends - lengths, ends):
                writers[subset].add(flat[a:b], doc_id)
        for subset, reason in result["skipped"]:
            skipped[subset][reason] += 1
        for subset, c in result["counts"].items():
            counts[subset].update(c)

    _process_groups(groups, tok, cfg, seed, workers, chunk_size, consume, progress, len(utts))
    if extra:
        consume(_extra_text_documents(tok, extra))

    entries = {s: w.close() for s, w in writers.items()}
    speech_units = speech_units_of(unit_map, cfg.expressive)
    t_done = time.perf_counter()
    write_index(
        tmp, entries, vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, tokenizer=tok_path
    )
    elapsed = time.perf_counter() - t0
    total_tokens = sum(c["tokens"] for c in counts.values())
    subsets = _subset_summaries(counts, skipped)
    all_speech = sum(c["speech_tokens"] for c in counts.values())
    all_text = sum(c["text_tokens"] for c in counts.values())
    summary = {
        "manifest": str(Path(manifest).resolve()),
        "units": str(Path(units).resolve()),
        "split": split,
        "seed": seed,
        "utterances": len(utts),
        "utterances_without_units": sum(1 for _, u in pairs if u is None),
        "interleaved_utterances": counts["interleaved"]["utterances"],
        "utterances_with_words": sum(1 for u in utts if u.words),
        "extra_text": str(Path(extra_text).resolve()) if extra_text else None,
        "extra_text_documents": len(extra),
        "tokenizer": tok_path,
        "vocab_size": tok.vocab_size,
        "speech_units": speech_units,
        "interleave": asdict(cfg),
        "subsets": subsets,
        "tokens": total_tokens,
        "speech_text_ratio": all_speech / all_text if all_text else None,
        "skipped": {s: sum(skipped[s].values()) for s in SUBSETS},
        "build_seconds": round(elapsed, 3),
        "prepare_seconds": round(t_tok - t0, 3),
        "tokenize_seconds": round(t_done - t_tok, 3),
        "tokens_per_second": round(total_tokens / elapsed, 1) if elapsed > 0 else None,
        "workers": workers,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    if not allow_skips:
        _check_speech_documents(units, len(utts), counts, skipped)
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    (tmp / SPEECH_UNITS_FILE).write_text(json.dumps(speech_units) + "\n")
    return summary

def _build_tokenizer(units, out: Path, tmp: Path, texts: list[str], text_tokenizer, expressive: bool, vocab_size: int,
                     pad_to_multiple: int):
    """``(tokenizer, its path as the index names it)`` of a build (:func:`make_tokenizer`); a copy is
    kept in ``tmp`` when it lives in the directory being replaced. DataBuildError when it has no
    HuBERT tokens or a unit in ``units`` is beyond its speech vocabulary (named by its line)."""
    tok, tok_path = make_tokenizer(tmp, texts, text_tokenizer, expressive, vocab_size, pad_to_multiple=pad_to_multiple)
    if tok_path != TOKENIZER_FILE and Path(tok_path).is_relative_to(out.resolve()):
        tok.save(tmp / TOKENIZER_FILE)  # the tokenizer lives in the directory being replaced: keep a copy
        tok_path = TOKENIZER_FILE
    if tok.num_units["hubert"] == 0:
        raise DataBuildError(f"{tok_path}: the tokenizer has no HuBERT tokens (--text_tokenizer)")
    try:  # a unit the tokenizer cannot encode is named by its line here, not mid-build
        streams = ("hubert", "pitch", "style") if expressive else ("hubert",)
        check_unit_ranges(units, {s: tok.num_units[s] for s in streams}, "--text_tokenizer / --num_hubert")
    except UnitFormatError as e:
        raise DataBuildError(str(e)) from None
    return tok, tok_path


def _process_groups(groups: list, tok, cfg: InterleaveConfig, seed: int, workers: int, chunk_size: int,
                    consume: Callable[[dict[str, Any]], None], progress: bool, n_utts: int) -> None:
    """Tokenizes the utterance groups in chunks of ``chunk_size`` (in ``workers`` forked processes,
    or in this one), handing each chunk's result to ``consume`` in chunk order."""
    chunks = [(i, min(i + chunk_size, len(groups))) for i in range(0, len(groups), chunk_size)]
    _W["groups"] = groups
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_utts, desc="build", unit="utt")
    if workers > 1 and len(chunks) > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tok.model_proto, cfg, seed)) as pool:
            for (a, b), result in zip(chunks, pool.imap(_process_range, chunks)):
                consume(result)
                if bar:
                    bar.update(sum(len(g) for g in groups[a:b]))
    else:
        _init_worker(tok.model_proto, cfg, seed)
        for a, b in chunks:
            consume(_process_range((a, b)))
            if bar:
                bar.update(sum(len(g) for g in groups[a:b]))
    _W.clear()
    if bar:
        bar.close()


def _subset_summaries(counts: dict[str, Counter], skipped: dict[str, Counter]) -> dict[str, dict[str, Any]]:
    """summary.json's ``subsets``: documents, tokens by kind, ratios and skips of each subset."""
    subsets = {}
    for s in SUBSETS:
        c = counts[s]
        subsets[s] = {
            "documents": c["documents"],
            "tokens": c["tokens"],
            "speech_tokens": c["speech_tokens"],
            "text_tokens": c["text_tokens"],
            "marker_tokens": c["marker_tokens"],
            "speech_text_ratio": (c["speech_tokens"] / c["text_tokens"]) if c["text_tokens"] else None,
            "mean_tokens_per_document": (c["tokens"] / c["documents"]) if c["documents"] else None,
            "skipped": dict(sorted(skipped[s].items())),
        }
    return subsets


def _check_speech_documents(units, n_utts: int, counts: dict[str, Counter], skipped: dict[str, Counter]) -> None:
    """DataBuildError when the speech or the interleaved subset got no document (``--allow_skips`` false)."""
    for s in ("speech", "interleaved"):
        if not counts[s]["documents"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped[s].items())) or "none"
            raise DataBuildError(
                f"{units}: no {s} documents from {n_utts} utterances (skipped: {reasons}); "
                "pass --allow_skips true to write the build anyway"
            )
