"""``spiritlm corpus synth`` and ``spiritlm corpus check``.

Plain functions: the top-level dispatcher (:mod:`spiritlm.cli`) builds each parser, ``--help``
included, from the signature and the docstring with jsonargparse.
"""

from __future__ import annotations


def synth(
    out: str,
    num_utts: int = 200,
    seed: int = 0,
    workers: int | None = None,
    sample_rate: int = 16000,
    num_speakers: int = 4,
    splits: dict[str, float] | None = None,
    mix: dict[str, float] | None = None,
    sentiment_style_coupling: float = 0.7,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Synthesise an aligned speech-text corpus with libespeak-ng.

    Writes OUT/wavs/<id>.wav (16-bit PCM mono), OUT/manifest.jsonl (with exact word and phone
    times in seconds), OUT/stats.json and OUT/synth_report.json (timing). The same arguments
    give byte-identical WAVs, manifest and stats, whatever the number of workers.

    Args:
        out: output folder (created if missing).
        num_utts: number of utterances.
        seed: random seed of texts, speakers, styles and prosody.
        workers: rendering processes (default: the number of CPUs).
        sample_rate: output sample rate in Hz.
        num_speakers: number of synthetic speakers (1 to 8).
        splits: split name to fraction, as JSON (default {"train": 0.8, "valid": 0.1, "test": 0.1}).
        mix: text source to fraction, as JSON (default {"sentiment": 0.3, "intent": 0.3, "narrative": 0.4}).
        sentiment_style_coupling: probability that a sentiment sentence is spoken in the style
            of its label (positive: happy, negative: sad, neutral: neutral).
        overwrite: replace a corpus already in OUT.
        progress: show a progress bar on stderr.
    """
    from spiritlm.corpus.synth import SynthConfig, synthesize_corpus

    cfg = SynthConfig(
        num_utts=num_utts,
        seed=seed,
        workers=workers,
        sample_rate=sample_rate,
        num_speakers=num_speakers,
        sentiment_style_coupling=sentiment_style_coupling,
        progress=progress,
    )
    if splits is not None:
        cfg.splits = dict(splits)
    if mix is not None:
        cfg.mix = dict(mix)
    from spiritlm.errors import UserError

    try:
        result = synthesize_corpus(cfg, out, overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    s, r = result.stats, result.report
    print(f"wrote {result.manifest}")
    print(f"utterances: {s['num_utts']}  audio: {s['seconds']:.1f} s = {s['hours']:.4f} h")
    for key in ("splits", "speakers", "styles", "sources", "sentiments", "intents"):
        print(f"{key + ':':12} " + "  ".join(f"{k}={v}" for k, v in s[key].items()))
    print(f"words: {s['num_words']}  vocabulary: {s['vocab_size']}  phones: {s['num_phones']} ({s['phone_inventory_size']} distinct)")
    print(
        f"throughput: {r['throughput_x_realtime']}x real time "
        f"({r['audio_seconds']:.1f} s of audio in {r['wall_seconds']:.1f} s with {r['workers']} workers)"
    )


def check(manifest: str, audio: bool = True, sample_rate: int | None = None) -> None:
    """Validate a manifest: every line, every problem.

    Checks JSON syntax, keys and types, duplicate ids, audio files (present, readable, mono,
    sample rate, duration within 10 ms) and word/phone alignments (ordered, non-overlapping,
    inside the audio). Prints a summary and each bad line with its reason; exits with status 1
    when there is any problem.

    Args:
        manifest: path of the manifest (JSONL).
        audio: also open the audio files.
        sample_rate: require this sample rate (Hz) on every line.
    """
    from spiritlm.corpus.manifest import check_manifest

    report = check_manifest(manifest, check_audio=audio, expected_sample_rate=sample_rate)
    for problem in report.problems:
        print(f"{manifest}:{problem}")
    print(report.summary())
    if not report.ok:
        raise SystemExit(1)


# `spiritlm corpus check MANIFEST` takes its manifest positionally (see spiritlm.cli.positional).
check.cli_positional = True  # type: ignore[attr-defined]

def text(out: str, num_sentences: int = 20000, seed: int = 0, mix: dict[str, float] | None = None) -> None:
    """Write a text-only corpus (one document a line) from the spoken corpus' sentence generators.

    It stands in for the text a real run inherits from LLaMA-2's pretraining; pass it to
    ``spiritlm data build --extra_text`` to enlarge the text-only subset.

    Args:
        out: output text file (UTF-8, one document a line).
        num_sentences: number of documents.
        seed: random seed (item i depends only on the seed and i).
        mix: text source to weight, as JSON (default {"narrative": 0.6, "sentiment": 0.2, "intent": 0.2}).
    """
    from spiritlm.atomic import atomic_file
    from spiritlm.corpus.text_sources import text_corpus
    from spiritlm.errors import UserError

    try:
        docs = text_corpus(num_sentences, seed, mix)
    except ValueError as e:
        raise UserError(f"{e} (--mix, --num_sentences)") from None
    with atomic_file(out, encoding="utf-8") as f:
        f.write("".join(d + "\n" for d in docs))
    words = sum(len(d.split()) for d in docs)
    print(f"wrote {out}: {len(docs)} documents, {words} words, vocabulary {len({w for d in docs for w in d.split()})}")


COMMANDS = {"synth": synth, "check": check, "text": text}
