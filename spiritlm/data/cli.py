"""``spiritlm data``: build token directories, inspect them, train the text tokenizer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

from spiritlm.cli import flags_from, positional
from spiritlm.interleave import InterleaveConfig

GroupWords = restricted_number_type("GroupWords", int, (">=", -1), docstring="-1: auto, 0: each utterance alone, N: groups of N words")


@flags_from(InterleaveConfig, "expressive", "text_span_min", "text_span_max", "speech_span_min", "speech_span_max",
            "duration_tolerance")
def build(
    manifest: str,
    units: str,
    out: str,
    text_tokenizer: str | None = None,
    extra_text: str | None = None,
    split: str | None = None,
    workers: PositiveInt = 2,
    seed: int = 0,
    vocab_size: PositiveInt = 1000,
    pad_to_multiple: PositiveInt = 256,
    group_words: GroupWords = -1,
    shard_tokens: PositiveInt = 1 << 26,
    progress: bool = True,
    overwrite: bool = False,
    allow_skips: bool = False,
    **interleave,
) -> None:
    """Tokenize speech-only, text-only and interleaved documents into sharded token files.

    Writes OUT/index.json, OUT/<subset>/*.bin|.idx.npy|.ids.txt, OUT/summary.json,
    OUT/speech_units.json (units per stream in the units file, which generation keeps to) and,
    unless an extended tokenizer is given, OUT/tokenizer.model. The directory appears only when
    the build is complete; a failed build leaves nothing behind.

    Example: spiritlm data build --manifest corpus/manifest.jsonl --units units.jsonl --out data/train --split train

    Args:
        manifest: manifest JSONL (utterances with text and word alignments).
        units: units JSONL (Meta's unit dicts with an "id" or "audio" key, not deduplicated).
        out: output directory.
        text_tokenizer: sentencepiece model: an extended one is used as is, a text-only one
            (e.g. LLaMA-2's tokenizer.model) is extended and saved in OUT; when omitted a BPE
            model is trained on the manifest's text and saved in OUT.
        extra_text: text file with one text-only document a line (e.g. from
            spiritlm corpus text), added to the text subset and to the BPE training text.
        split: keep only the manifest's utterances of this split (default: all).
        workers: tokenizing processes.
        seed: seed of the interleaving draws.
        vocab_size: size of a trained BPE model before the speech tokens are added.
        pad_to_multiple: pad the extended vocabulary to a multiple of this.
        group_words: 0 interleaves each utterance alone (Meta's setting, for utterances of 15
            words or more); N > 0 interleaves groups of consecutive utterances of one speaker
            holding at least N words. Needed for corpora of short sentences (such as the
            synthetic corpus): alone, an utterance shorter than its first span gives no
            interleaved document (counted as too_short_to_interleave). -1 (default): 0 when the
            median utterance has at least text_span_min + speech_span_min words, else
            text_span_max + speech_span_max. The value used is in summary.json.
        shard_tokens: most tokens in one shard file.
        progress: show a progress bar.
        overwrite: replace OUT if it already holds something (only once the new build is complete).
        allow_skips: accept a build without any speech or interleaved document (by default that
            is an error, so scripts can tell).
    """
    from spiritlm.atomic import check_new_output
    from spiritlm.errors import UserError

    for flag, path in (("--manifest", manifest), ("--units", units), ("--text_tokenizer", text_tokenizer), ("--extra_text", extra_text)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: no such file ({flag})")
    check_new_output(out, overwrite, markers=("index.json", "summary.json"))

    from spiritlm.data.build import build_dataset

    cfg = InterleaveConfig(group_words=group_words, **interleave)
    summary = build_dataset(
        manifest, units, out, interleave=cfg, text_tokenizer=text_tokenizer, extra_text=extra_text, split=split,
        workers=workers, seed=seed, vocab_size=vocab_size, pad_to_multiple=pad_to_multiple, shard_tokens=shard_tokens,
        progress=progress, overwrite=overwrite, allow_skips=allow_skips)
    _print_build_summary(summary, out)


def _print_build_summary(summary: dict, out: str) -> None:
    """``build``'s report: documents and tokens per subset, the interleaving, the speed."""
    for name, s in summary["subsets"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items()) or "none"
        print(f"{name:>12}: {s['documents']} documents, {s['tokens']} tokens; skipped: {skipped}")
    n = summary["interleave"]["group_words"]
    grouped = f"groups of >= {n} words of one speaker" if n else "each utterance alone"
    print(f"interleaved: {summary['interleaved_utterances']} of {summary['utterances']} utterances "
          f"({summary['utterances_with_words']} with word times; {grouped})")
    print(f"{summary['tokens']} tokens in {summary['build_seconds']} s ({summary['tokens_per_second']} tokens/s) -> {out}")


@positional
def inspect(
    data_dir: str,
    num_examples: NonNegativeInt = 2,
    max_speech_tokens: NonNegativeInt = 24,
    color: Literal["auto", "always", "never"] = "auto",
    text_tokenizer: str | None = None,
) -> None:
    """Print the summary and decoded documents of a token directory, spans tagged by modality.

    Args:
        data_dir: token directory written by `spiritlm data build`.
        num_examples: documents shown per subset.
        max_speech_tokens: speech tokens shown per speech span before cutting.
        color: colour the modality tags: auto (when writing to a terminal), always or never.
        text_tokenizer: sentencepiece model to decode with (default: the one named in the index).
    """
    from spiritlm.data.inspect import inspect_dir

    use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
    print(inspect_dir(data_dir, num_examples, max_speech_tokens, use_color, text_tokenizer))


def train_text_tokenizer(
    out: str,
    manifest: str | None = None,
    text_file: str | None = None,
    base_model: str | None = None,
    split: str | None = None,
    vocab_size: PositiveInt = 1000,
    expressive: bool = False,
    num_hubert: PositiveInt = 501,
    pad_to_multiple: PositiveInt = 256,
    overwrite: bool = False,
) -> None:
    """Train a BPE text tokenizer (or take an existing one) and extend it with the speech vocabulary.

    Args:
        out: output sentencepiece .model file.
        manifest: train on the "text" of this manifest's utterances.
        text_file: train on this text file, one sentence a line.
        base_model: extend this sentencepiece model (e.g. LLaMA-2's tokenizer.model) instead of
            training one.
        split: with --manifest, use only this split's utterances.
        vocab_size: BPE vocabulary size before the speech tokens are added.
        expressive: add 64 pitch and 100 style tokens too.
        num_hubert: number of HuBERT units.
        pad_to_multiple: pad the vocabulary to a multiple of this.
        overwrite: replace an existing OUT (written under a temporary name, renamed when complete).
    """
    from spiritlm.atomic import atomic_file, check_output
    from spiritlm.errors import UserError

    check_output(out, overwrite)
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    n_pitch, n_style = (64, 100) if expressive else (0, 0)
    if sum(x is not None for x in (manifest, text_file, base_model)) != 1:
        raise UserError("give exactly one of --manifest, --text_file, --base_model")
    for flag, path in (("--manifest", manifest), ("--text_file", text_file), ("--base_model", base_model)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: no such file ({flag})")
    if base_model is not None:
        tok = SpiritTextTokenizer.from_base_model(base_model, num_hubert, n_pitch, n_style, pad_to_multiple)
    else:
        if manifest is not None:
            from spiritlm.data.build import read_manifest_utterances

            texts = [u.text for u in read_manifest_utterances(manifest, split)]
        else:
            texts = Path(text_file).read_text().splitlines()
        try:
            tok = SpiritTextTokenizer.train(texts, vocab_size, num_hubert, n_pitch, n_style, pad_to_multiple)
        except RuntimeError as e:  # sentencepiece's trainer: "Vocabulary size is smaller than required_chars. 60 vs 289 …"
            msg = str(e).split("] ", 1)[-1].split(" Increase", 1)[0]
            raise UserError(f"{manifest or text_file}: sentencepiece cannot train a {vocab_size}-piece vocabulary on it: "
                            f"{msg} (--vocab_size)") from None
    with atomic_file(out, "wb") as f:
        f.write(tok.model_proto)
    print(json.dumps({"out": out, "vocab_size": tok.vocab_size, "text_pieces": tok.num_text_pieces, "units": tok.num_units}))


COMMANDS = {"build": build, "inspect": inspect, "train-text-tokenizer": train_text_tokenizer}
