"""``spiritlm corpus synth`` and ``spiritlm corpus check``.

Plain functions: the top-level dispatcher (:mod:`spiritlm.cli`) builds each parser, ``--help``
included, from the signature and the docstring with jsonargparse.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt

from spiritlm.cli import flags_from
from spiritlm.corpus.segment import SegmentConfig
from spiritlm.corpus.synth import SampleRate, SynthConfig


@flags_from(SynthConfig, "num_utts", "seed", "workers", "sample_rate", "num_speakers", "splits", "mix",
            "sentiment_style_coupling", "progress")
def synth(out: str, overwrite: bool = False, **settings) -> None:
    """Synthesise an aligned speech-text corpus with libespeak-ng.

    Writes OUT/wavs/<id>.wav (16-bit PCM mono), OUT/manifest.jsonl (with exact word and phone
    times in seconds), OUT/stats.json and OUT/synth_report.json (timing). The same arguments
    give byte-identical WAVs, manifest and stats, whatever the number of workers. --splits and
    --mix are JSON, e.g. --splits '{"train": 0.9, "test": 0.1}'.

    Args:
        out: output folder (created if missing).
        overwrite: replace a corpus already in OUT.
    """
    from spiritlm.corpus.synth import synthesize_corpus

    cfg = SynthConfig(**settings)
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


def check(manifest: str, audio: bool = True, sample_rate: SampleRate | None = None) -> None:
    """Validate a manifest: every line, every problem.

    Checks JSON syntax, keys and types, duplicate ids, audio files (what `spiritlm tokenize`
    accepts: present, readable, finite, at least 80 ms, any channel count or sample rate; and the
    line's sample_rate and duration within 10 ms of the file's) and word/phone alignments (ordered, non-overlapping,
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

def text(out: str, num_sentences: PositiveInt = 20000, seed: int = 0, mix: dict[str, float] | None = None, overwrite: bool = False) -> None:
    """Write a text-only corpus (one document a line) from the spoken corpus' sentence generators.

    It stands in for the text a real run inherits from LLaMA-2's pretraining; pass it to
    ``spiritlm data build --extra_text`` to enlarge the text-only subset.

    Args:
        out: output text file (UTF-8, one document a line).
        num_sentences: number of documents.
        seed: random seed (item i depends only on the seed and i).
        mix: text source to weight, as JSON (default {"narrative": 0.6, "sentiment": 0.2, "intent": 0.2}).
        overwrite: replace an existing OUT (written under a temporary name, renamed when complete).
    """
    from spiritlm.atomic import atomic_file, check_output
    from spiritlm.corpus.text_sources import text_corpus
    from spiritlm.errors import UserError

    check_output(out, overwrite)

    try:
        docs = text_corpus(num_sentences, seed, mix)
    except ValueError as e:
        raise UserError(f"{e} (--mix, --num_sentences)") from None
    with atomic_file(out, encoding="utf-8") as f:
        f.write("".join(d + "\n" for d in docs))
    words = sum(len(d.split()) for d in docs)
    print(f"wrote {out}: {len(docs)} documents, {words} words, vocabulary {len({w for d in docs for w in d.split()})}")


def _finish_skips(skipped: list[str], kept: int, allow_skips: bool, what: str, listed_in: str | None) -> None:
    """Prints skipped items (the first 20; all are in the file ``listed_in`` when given) and ends
    non-zero when there were any, unless allowed."""
    import sys

    from spiritlm.errors import UserError

    for line in skipped[:20]:
        print(f"skipped: {line}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"skipped: ... {len(skipped) - 20} more" + (f" (all in {listed_in})" if listed_in else ""), file=sys.stderr)
    if skipped and not kept:
        raise UserError(f"every {what} was skipped ({len(skipped)}; first: {skipped[0]})")
    if skipped and not allow_skips:
        raise UserError(f"{len(skipped)} {what}(s) skipped (first: {skipped[0]}); pass --allow_skips true to accept")


def _check_in_out(manifest: str | None, out: str, overwrite: bool, done: tuple[str, ...] = ()) -> bool:
    """A readable --manifest (when given) and an --out that is new or may be replaced; returns
    whether a finished OUT is there (to be replaced: ``overwrite``).

    The output rule of every command (:func:`spiritlm.atomic.check_output`): a finished OUT (the
    file, or with ``done`` a folder holding one of those files) is refused unless ``overwrite``;
    an absent one, or what an interrupted run left (``align``'s OUT.parts/), is written or resumed.
    """
    import os

    from spiritlm.atomic import check_output
    from spiritlm.errors import UserError

    if manifest is not None and not os.path.isfile(manifest):
        raise UserError(f"{manifest}: no such file (--manifest)")
    return check_output(out, overwrite, done)


# long: 80 of its lines are the 23 flags and their --help text (this docstring); the body is 28 lines
def import_corpus(
    format: str,
    src: str | None = None,
    out: str | None = None,
    alignments: str | None = None,
    supervisions: str | None = None,
    pattern: str | None = None,
    split: str | None = None,
    split_by: Literal["none", "utterance", "speaker"] = "none",
    split_fractions: dict[str, float] | None = None,
    seed: int = 0,
    require_text: bool = True,
    audio_column: str | None = None,
    text_column: str | None = None,
    speaker_column: str | None = None,
    id_column: str | None = None,
    words_column: str | None = None,
    max_duration: PositiveFloat | None = None,
    segment_long: bool = False,
    vad: Literal["silero", "energy"] = "silero",
    allow_skips: bool = False,
    overwrite: bool = False,
) -> None:
    """Import a corpus you have: write OUT/manifest.jsonl pointing at its audio (nothing is copied,
    except audio held inside a Hugging Face dataset, written once to OUT/audio/).

    Examples:
      spiritlm corpus import librispeech --src LibriSpeech/train-clean-100 --out ls100 [--alignments librispeech_alignments/]
      spiritlm corpus import folder --src my_recordings --pattern '{speaker}/*' --split_by speaker --out mine
      spiritlm corpus import lhotse --src cuts.jsonl.gz --out imported
      spiritlm corpus import hf --src my_dataset_saved_to_disk --out imported [--text_column normalized_text]

    FORMAT is librispeech (SPEAKER/CHAPTER/*.flac + SPEAKER-CHAPTER.trans.txt), folder (audio
    files with a same-stem .txt or .lab transcript), lhotse (a CutSet, or a RecordingSet with
    --supervisions) or hf (a Hugging Face datasets folder written by save_to_disk, or parquet
    files, with an Audio column; a DatasetDict's splits become the manifest's). Items that cannot
    be read are skipped and listed in OUT/import_skipped.txt; the command then exits with status 1
    unless --allow_skips true. An interrupted hf import reuses the audio it wrote when rerun.

    Args:
        format: librispeech, folder, lhotse or hf.
        src: the corpus folder (librispeech, folder), manifest file (lhotse), or dataset (hf: a
            save_to_disk folder, a parquet file or a folder of parquet files).
        out: output folder (manifest.jsonl, import_skipped.txt; hf: audio/).
        alignments: librispeech: a folder or file of word alignments, the public LibriSpeech
            SPEAKER-CHAPTER.alignment.txt files or Montreal Forced Aligner TextGrids (words tier).
        supervisions: lhotse: the SupervisionSet of a RecordingSet given as --src (default: the
            file named like --src with recordings replaced by supervisions).
        pattern: folder: path pattern giving speaker/style/split/id, e.g. '{speaker}/{style}/*'
            ({name} captures, * matches within a folder, ** across folders; relative to --src,
            without extension). Default: speaker = the parent folder.
        split: the split of every utterance (train / valid / test); default from the folder
            names (librispeech: train-*, dev-*, test-*), the pattern, or (hf) the dataset's split
            names (train* -> train, validation* / dev* -> valid, test* -> test, others kept).
        split_by: none keeps the splits the source has (above); utterance or speaker makes
            held-out splits, replacing the source's: each utterance id, or each speaker (whole
            speakers per split: speaker-disjoint splits), is hashed with --seed into
            --split_fractions. Fractions hold in expectation, counted in utterances or in
            speakers (not hours); adding files never moves the ones imported before; the
            pieces of a recording cut by --segment_long stay in its split.
        split_fractions: with --split_by: split name to fraction, as JSON (default
            {"train": 0.9, "valid": 0.05, "test": 0.05}); a split that gets no utterance is an error.
        seed: with --split_by: the hash seed (another seed, another assignment).
        require_text: folder, hf: skip audio without a transcript (false: keep it as speech only).
        audio_column: hf: the audio column (default: audio, else the one column of type Audio).
        text_column: hf: the transcript column (default: text, sentence or transcription).
        speaker_column: hf: the speaker column (default: speaker_id, speaker or client_id; else unknown).
        id_column: hf: the utterance id column (default: id; else SPLIT-ROW).
        words_column: hf: word times, a list of {word, start, end} in seconds (default: words, when present).
        max_duration: longest recording kept, seconds: longer ones are skipped, or cut with
            --segment_long true.
        segment_long: cut recordings longer than --max_duration at pauses (spiritlm corpus segment)
            into OUT/segments/ instead of skipping them: between words when they have word times,
            at the VAD's pauses when they have no transcript; one with a transcript but no word
            times is skipped (import it whole, then spiritlm corpus segment --aligner).
        vad: with --segment_long, the voice activity detector for recordings without a transcript:
            silero or energy.
        allow_skips: exit with status 0 even when some items were skipped.
        overwrite: replace an existing OUT/manifest.jsonl (hf: and write its audio again).
    """
    import os

    from spiritlm.corpus import importers
    from spiritlm.errors import UserError

    fractions, finished = _check_import_flags(format, src, out, overwrite, split, split_by, split_fractions, alignments,
                                              supervisions, pattern, audio_column, text_column, speaker_column, id_column,
                                              words_column)
    try:
        result = _read_source(format, src, out, alignments, supervisions, pattern, split, require_text,
                              importers.HFColumns(audio=audio_column, text=text_column, speaker=speaker_column,
                                                  id=id_column, words=words_column),
                              reuse_audio=not finished, max_duration=None if segment_long else max_duration)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    utts, skipped = result.utterances, list(result.skipped)
    # before segmenting: the pieces of a long recording inherit its split
    importers.assign_splits(utts, split_by, fractions, seed)
    if max_duration is not None:
        utts = _limit_duration(utts, skipped, max_duration, segment_long, vad, out)
    if split_by != "none":
        try:
            importers.check_splits_filled(utts, split_by, fractions, seed)
        except ValueError as e:
            raise UserError(str(e)) from None
    log = os.path.join(out, "import_skipped.txt")
    _write_import(format, out, utts, skipped, log)
    _finish_skips(skipped, len(utts), allow_skips, "item", log)


def _check_import_flags(format, src, out, overwrite, split, split_by, split_fractions, alignments, supervisions, pattern,
                        audio_column, text_column, speaker_column, id_column, words_column):
    """``import_corpus``'s flags checked before anything is read: ``(split fractions, whether OUT holds a
    finished import)``; a one-line UserError naming the flag otherwise."""
    from spiritlm.corpus import importers
    from spiritlm.errors import UserError

    if src is None or out is None:
        raise UserError("corpus import FORMAT needs --src and --out")
    if split_by != "none" and split is not None:
        raise UserError(f"--split {split} and --split_by {split_by} both set the splits: give one")
    if split_by == "none" and split_fractions is not None:
        raise UserError("--split_fractions needs --split_by utterance or speaker")
    try:
        fractions = importers.check_split_fractions(split_fractions)
    except ValueError as e:
        raise UserError(str(e)) from None
    finished = _check_in_out(None, out, overwrite, done=("manifest.jsonl",))
    for flag, value, formats in (("--alignments", alignments, ("librispeech",)), ("--supervisions", supervisions, ("lhotse",)),
                                 ("--pattern", pattern, ("folder",)), ("--audio_column", audio_column, ("hf",)),
                                 ("--text_column", text_column, ("hf",)), ("--speaker_column", speaker_column, ("hf",)),
                                 ("--id_column", id_column, ("hf",)), ("--words_column", words_column, ("hf",))):
        if value is not None and format not in formats:
            raise UserError(f"{flag} is for corpus import {' / '.join(formats)}, not {format}")
    return fractions, finished


def _read_source(format, src, out, alignments, supervisions, pattern, split, require_text, cols, reuse_audio, max_duration):
    """The ``ImportResult`` of FORMAT's importer; ValueError/OSError for a bad source or FORMAT."""
    import os

    from spiritlm.corpus import importers

    if format == "librispeech":
        return importers.import_librispeech(src, alignments, split)
    if format == "folder":
        return importers.import_folder(src, pattern, split, require_text)
    if format == "lhotse":
        if not os.path.exists(src):
            raise ValueError(f"{src}: no such file (--src)")
        return importers.import_lhotse(src, supervisions, split)
    if format == "hf":
        # a finished import replaced (--overwrite true) writes its audio again; an interrupted one reuses it
        # rows longer than --max_duration are refused before their audio is written (unless cut)
        return importers.import_hf(src, out, cols, split, require_text, reuse_audio=reuse_audio, max_duration=max_duration)
    raise ValueError(f"unknown FORMAT {format!r}: librispeech, folder, lhotse or hf")


def _limit_duration(utts: list, skipped: list[str], max_duration: float, segment_long: bool, vad: str, out: str) -> list:
    """``utts`` with those longer than ``max_duration`` cut at pauses into OUT/segments/
    (``segment_long``) or dropped; each one not kept is appended to ``skipped`` with its reason."""
    from spiritlm.corpus import importers

    long = [u for u in utts if u.duration > max_duration]
    utts = [u for u in utts if u.duration <= max_duration]
    if long and segment_long:
        from spiritlm.corpus.segment import SegmentConfig, segment_utterance

        cfg = SegmentConfig(max_seconds=max_duration, vad=vad)
        for u in long:
            if not u.words and u.text.strip():  # cutting between its words needs an aligner; import loads none
                skipped.append(f"{u.audio}: lasts {u.duration:.1f} s and has a transcript but no word times, which "
                               "--segment_long needs to cut between words: import it without --max_duration, then "
                               "spiritlm corpus segment --aligner CTC")
                continue
            try:
                pieces, _ = segment_utterance(u, cfg, out)
                utts += pieces
            except ValueError as e:
                skipped.append(f"{u.audio}: {e}")
    else:
        skipped += [f"{u.audio}: {importers.too_long(u.duration, max_duration)}" for u in long]
    return utts


def _write_import(format: str, out: str, utts: list, skipped: list[str], skipped_file: str) -> None:
    """Writes OUT/manifest.jsonl (hf: and drops the clips no utterance uses) and the skipped list
    (``skipped_file``, removed when nothing was skipped), then prints the totals per split."""
    import os

    from spiritlm.corpus import importers
    from spiritlm.corpus.manifest import write_manifest

    manifest = os.path.join(out, "manifest.jsonl")
    if utts:
        write_manifest(manifest, utts)
    if format == "hf" and utts:  # no clip of a refused or cut row is left behind (a rerun before this point reuses them)
        importers.remove_unreferenced_audio(os.path.join(out, "audio"), utts)
    if skipped:
        from spiritlm.atomic import atomic_file

        with atomic_file(skipped_file, encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in skipped))
    elif os.path.exists(skipped_file):
        os.remove(skipped_file)
    aligned = sum(bool(u.words) for u in utts)
    hours = sum(u.duration for u in utts) / 3600
    if utts:
        print(f"wrote {manifest}: {len(utts)} utterances ({hours:.3f} h, {aligned} with word times), {len(skipped)} skipped")
        by_split: dict[str, list] = {}
        for u in utts:
            by_split.setdefault("(none)" if u.split is None else u.split, []).append(u)
        print("splits: " + "  ".join(
            f"{k}={len(v)} ({sum(u.duration for u in v) / 3600:.3f} h, {len({u.speaker for u in v})} speakers)"
            for k, v in sorted(by_split.items())))


import_corpus.cli_positional = True  # type: ignore[attr-defined]


def export(format: str, manifest: str | None = None, out: str | None = None, overwrite: bool = False) -> None:
    """Export a manifest to another toolkit's format: lhotse (a CutSet, jsonl or jsonl.gz).

    Example: spiritlm corpus export lhotse --manifest corpus/manifest.jsonl --out cuts.jsonl.gz

    Word times go to each supervision's alignment["word"]; style, sentiment, intent, split,
    phones and other keys to its custom dict, so corpus import lhotse gives the manifest back.

    Args:
        format: lhotse.
        manifest: the manifest to export.
        out: output file (.jsonl.gz or .jsonl).
        overwrite: replace an existing OUT.
    """
    from spiritlm.corpus.importers import export_lhotse
    from spiritlm.corpus.manifest import read_manifest
    from spiritlm.errors import UserError

    if manifest is None or out is None:
        raise UserError("corpus export FORMAT needs --manifest and --out")
    if format != "lhotse":
        raise UserError(f"unknown FORMAT {format!r}: lhotse")
    if not out.endswith((".jsonl", ".jsonl.gz")):
        raise UserError(f"{out}: a lhotse manifest ends in .jsonl or .jsonl.gz (--out)")
    _check_in_out(manifest, out, overwrite)
    n = export_lhotse(read_manifest(manifest), out)
    print(f"wrote {out}: {n} cuts")


export.cli_positional = True  # type: ignore[attr-defined]


def align(
    manifest: str,
    aligner: str,
    out: str,
    shard: NonNegativeInt | None = None,
    num_shards: PositiveInt | None = None,
    batch_size: PositiveInt = 8,
    min_score: ClosedUnitInterval = 0.0,
    max_seconds: PositiveFloat = 120.0,
    threads: NonNegativeInt = 0,
    device: str = "cpu",
    allow_skips: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Word times by CTC forced alignment (torchaudio forced_align) of each transcript to its audio.

    Example: spiritlm corpus align --manifest ls100/manifest.jsonl --aligner wav2vec2-base-960h/ --out ls100/aligned.jsonl

    Writes OUT (the aligned utterances, with align_score and word_scores) and OUT.rejects.jsonl
    (utterances left out, with the reason: a score below --min_score, or an error). Sharded
    and resumable like spiritlm tokenize: utterance i belongs to shard i % num_shards (default:
    RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS); each shard appends to OUT.parts/ and a rerun
    goes on where it stopped; the last shard to finish writes OUT. Utterances that could not
    be aligned make the command exit with status 1 unless --allow_skips true.

    Args:
        manifest: input manifest (text and audio; words are replaced).
        aligner: mms_fa (torchaudio's MMS_FA bundle; downloads its weights), a Hugging Face
            Wav2Vec2ForCTC / HubertForCTC folder, or a spiritlm CTC judge folder (spiritlm eval judges).
        out: output manifest.
        shard: index of this shard.
        num_shards: number of shards.
        batch_size: utterances per forward pass.
        min_score: utterances whose alignment score (exp of the mean log-probability of their
            characters, 0-1) is below this go to the rejects file.
        max_seconds: longer utterances are refused (cut them with spiritlm corpus segment).
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        device: cpu or cuda.
        allow_skips: exit with status 0 even when some utterances could not be aligned.
        overwrite: replace an existing OUT.
        progress: show a progress bar.
    """
    from spiritlm.errors import UserError

    _check_in_out(manifest, out, overwrite)
    from spiritlm.launch import shard_from_env

    shard, num_shards, source = shard_from_env(shard, num_shards)
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num_shards {num_shards}; from {source})")
    from spiritlm.corpus.align import align_manifest, load_aligner, rejects_path

    from spiritlm.numerics import threads as pinned_threads

    model = load_aligner(aligner, device)  # first: a wrong --aligner is one line before torch is imported
    with pinned_threads(threads):
        report = align_manifest(manifest, model, out, shard, num_shards, batch_size, min_score, max_seconds, progress)
    speed = report.audio_seconds / report.wall_seconds if report.wall_seconds else 0.0
    print(f"align shard {shard}/{num_shards}: {report.written} aligned, {report.rejected} below --min_score, "
          f"{report.skipped} could not be aligned, {report.already_done} already done; "
          f"{report.audio_seconds:.0f} s of audio at {speed:.1f}x real time")
    if report.merged:
        print(f"wrote {out} and {rejects_path(out)}")
    else:
        print(f"waiting for the other shards: {out} is written by the last one to finish")
    _finish_skips(report.errors, report.written + report.rejected + report.already_done, allow_skips, "utterance",
                  rejects_path(out) if report.merged else None)


@flags_from(SegmentConfig, "max_seconds", "vad", "min_pause")
def segment(
    manifest: str,
    out: str,
    aligner: str | None = None,
    allow_skips: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
) -> None:
    """Cut recordings longer than --max_seconds at pauses into utterances (written to OUT's folder, segments/).

    Example: spiritlm corpus segment --manifest long/manifest.jsonl --out long/segmented.jsonl --max_seconds 30

    With word times (or --aligner to get them, the transcript aligned over windows) cuts fall
    between words, so every segment keeps whole words; without a transcript a voice activity
    detector (silero, shipped with its package, or energy) finds the pauses.

    Args:
        manifest: input manifest.
        out: output manifest (short utterances unchanged, long ones replaced by their segments).
        aligner: a CTC aligner (see spiritlm corpus align) for recordings with a transcript but no word times.
        allow_skips: exit with status 0 even when some recordings could not be cut.
        overwrite: replace an existing OUT.
        progress: show a progress bar.
    """
    _check_in_out(manifest, out, overwrite)
    from spiritlm.corpus.segment import segment_manifest

    model = None
    if aligner is not None:
        from spiritlm.corpus.align import load_aligner

        model = load_aligner(aligner)
    report = segment_manifest(manifest, out, SegmentConfig(**settings), model, progress)
    print(f"{'wrote ' + out if report.kept + report.segments else 'nothing written'}: {report.kept} utterances kept, {report.cut} cut into {report.segments} segments "
          f"({report.forced_cuts} cut inside speech), {len(report.skipped)} skipped")
    _finish_skips(report.skipped, report.kept + report.segments, allow_skips, "recording", None)


COMMANDS = {"synth": synth, "check": check, "text": text, "import": import_corpus, "export": export, "align": align,
            "segment": segment}
