"""``spiritlm tokenize``: a manifest's audio -> Meta's units JSONL, sharded and resumable."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from spiritlm.constants import SAMPLE_RATE
from spiritlm.launch import shard_from_env  # shared with spiritlm corpus align


@dataclass
class TokenizeReport:
    """What a run did. ``errors``: ``[{"id", "audio", "error"}]`` of skipped utterances."""

    written: int = 0
    already_done: int = 0
    skipped: int = 0
    torn_lines: int = 0
    errors: list[dict] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


class _LineAppender:
    """Appends whole lines to a file shared with other writers (``O_APPEND``, one ``write`` per line).

    The file is created at the first line. If it ends in a torn line, a newline is written first
    so that the next record starts a line of its own instead of being glued to the fragment.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def write(self, line: str) -> None:
        if self.fd is None:
            from spiritlm.atomic import make_parents

            make_parents(self.path)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self.fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        os.write(self.fd, b"\n")
        data = line.encode()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def tokenize_manifest(
    manifest: str,
    tokenizer,
    out: str,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 8,
    use_speaker: bool = True,
    progress: bool = True,
    batch_seconds: float | None = None,
) -> TokenizeReport:
    """Tokenizes shard ``shard`` of ``num_shards`` (utterance ``i`` of the manifest goes to shard
    ``i % num_shards``) into ``out``, appending; see :func:`tokenize` for the behaviour.

    With ``batch_seconds``, utterances are batched by length (:func:`~spiritlm.tokenizers.features.length_buckets`
    over the manifest's ``duration``: at most ``batch_size`` utterances and ``batch_seconds`` of
    padded audio per batch, longest first), so little compute goes to padding; records are then
    written in that order. Without it, batches of ``batch_size`` follow the manifest.
    """
    import time

    from tqdm import tqdm

    from .features import length_buckets

    from ..corpus.manifest import read_audio_manifest
    from .utils import load_audio_batch
    from spiritlm.units_jsonl import complete_ids

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in 0..{num_shards - 1} (--num_shards {num_shards}), got {shard}")
    items = [it for i, it in enumerate(read_audio_manifest(manifest)) if i % num_shards == shard]
    done, torn = complete_ids(out)
    report = TokenizeReport(already_done=sum(it.id in done for it in items), torn_lines=len(torn))
    todo = [it for it in items if it.id not in done]
    if batch_seconds:
        order = length_buckets([it.duration for it in todo], batch_seconds, batch_size)
    else:
        order = [list(range(k, min(k + batch_size, len(todo)))) for k in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc=f"tokenize shard {shard}/{num_shards}", unit="utt", disable=not progress)
    fout = _LineAppender(out)
    t0, audio_s = time.perf_counter(), 0.0
    try:
        for idx in order:
            group = [todo[k] for k in idx]
            batch, wavs = load_audio_batch(group, report.errors)
            audio_s += sum(len(w) for w in wavs) / SAMPLE_RATE
            speakers = [it.speaker if use_speaker else None for it in batch]
            try:
                results = tokenizer.encode_streams(wavs, speakers) if wavs else []
            except Exception:  # one bad item must not sink its batch: retry one at a time
                results = []
                keep = []
                for it, w, s in zip(batch, wavs, speakers):
                    try:
                        results.append(tokenizer.encode_streams([w], [s])[0])
                        keep.append(it)
                    except Exception as exc:  # noqa: BLE001 - reported and listed
                        report.errors.append({"id": it.id, "audio": it.audio, "error": f"{type(exc).__name__}: {exc}"})
                batch = keep
            for it, streams in zip(batch, results):
                rec = {"id": it.id, "audio": it.audio}
                rec.update({k: " ".join(map(str, v.tolist())) for k, v in streams.items()})
                fout.write(json.dumps(rec) + "\n")
                report.written += 1
            bar.update(len(group))
            bar.set_postfix_str(f"{audio_s / max(time.perf_counter() - t0, 1e-9):.1f} s audio/s")
    finally:
        fout.close()
        bar.close()
    report.skipped = len(report.errors)
    report.audio_seconds, report.wall_seconds = audio_s, time.perf_counter() - t0
    return report


def _check_out(out: str, overwrite: bool, shard_ids: set[str], num_shards: int) -> str:
    """The output rule of ``spiritlm tokenize`` (see :mod:`spiritlm.atomic`); returns the file to append to.

    OUT holding every id of the shard is finished: refused unless ``overwrite``. With
    ``overwrite`` the shard is tokenized into a temporary file (returned) that replaces OUT when
    complete; a file shared by several shards cannot be replaced by one of them. Otherwise OUT
    itself is appended to (an interrupted run resumes).
    """
    from spiritlm.atomic import check_output, make_parents
    from spiritlm.errors import UserError

    check_output(out, True)  # OUT a folder, or a parent that is a file: one line naming it
    if not overwrite:
        from spiritlm.units_jsonl import complete_ids

        done, _ = complete_ids(out)
        if shard_ids and shard_ids <= done:
            which = "the manifest" if num_shards == 1 else f"this shard of the manifest ({num_shards} shards)"
            raise UserError(f"{out}: already exists (a finished output: it holds every utterance of {which}); "
                            "pass --overwrite true to replace it (--out)")
        return out
    if num_shards > 1 and os.path.exists(out):
        raise UserError(f"{out}: --overwrite true replaces a whole file, and {num_shards} shards share this one; "
                        "delete it, or put {shard} in --out (one file per shard)")
    make_parents(out)
    return os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.tmp-{os.getpid()}")


def tokenize(
    manifest: str,
    speech_tokenizer: str,
    out: str,
    shard: NonNegativeInt | None = None,
    num_shards: PositiveInt | None = None,
    device: str = "cpu",
    batch_size: PositiveInt = 8,
    batch_seconds: NonNegativeFloat = 80.0,
    precision: Literal["fp32", "float32", "bf16", "bfloat16"] = "fp32",
    use_speaker: bool = True,
    threads: NonNegativeInt = 1,
    allow_skips: bool = False,
    overwrite: bool = False,
) -> None:
    """Tokenizes a manifest's audio into Meta's units JSONL (one line per utterance).

    Each line: {"id", "audio", "hubert", "pitch", "style"} (pitch and style for expressive
    tokenizers), space-separated token ids at 25 / 12.5 / 1 Hz, not deduplicated. Ids already in
    OUT are skipped (rerun to resume); lines torn by a killed run are ignored and their
    utterances redone, every other line is kept. An OUT that already holds every utterance of
    the shard is finished: a rerun is refused unless --overwrite true, which tokenizes the shard
    again into a new file that replaces OUT when complete (one shard per file only). Unusable audio (missing, unreadable, NaN/Inf,
    shorter than 80 ms) is skipped and listed in OUT.errors.json, everything else is still
    written; the command then exits with status 1 unless --allow_skips true (and always when
    nothing could be tokenized).

    Utterances are batched by length (--batch_seconds of padded audio, at most --batch_size
    utterances); progress shows the throughput in seconds of audio per second, and the end
    line the shard's total.

    Many workers: one process per shard, all appending to OUT. Without --shard/--num_shards the
    shard comes from the launcher: torchrun's RANK/WORLD_SIZE or srun's SLURM_PROCID/SLURM_NTASKS,
    e.g. `torchrun --nproc_per_node 8 -m spiritlm.cli tokenize ... --device cuda` (see docs/scaling.md).

    Example: spiritlm tokenize --manifest corpus/manifest.jsonl --speech_tokenizer tok/ --out units.jsonl

    Args:
        manifest: JSONL manifest (id, audio; speaker for pitch normalisation).
        speech_tokenizer: speech tokenizer directory (from spiritlm tokenizer train or assemble).
        out: output JSONL (appended to; shards may share one file on a local disk). ``{shard}`` in
            the name is replaced by the shard index (one file per shard: use it on network file
            systems, where appends from several machines are not atomic).
        shard: index of this shard (0-based; default: RANK or SLURM_PROCID, else 0).
        num_shards: number of shards; utterance i of the manifest belongs to shard i % num_shards
            (default: WORLD_SIZE or SLURM_NTASKS, else 1).
        device: cpu, cuda or auto (``cuda`` under torchrun: ``cuda:LOCAL_RANK``).
        batch_size: utterances per batch at most.
        batch_seconds: padded seconds of audio per batch at most (utterances are sorted by the
            manifest's duration; 0: batches of --batch_size in manifest order).
        precision: fp32 (default: exact, equal to transformers' HubertModel) or bf16 (HuBERT's
            matrix products in bfloat16, norms, residual stream and k-means distances in fp32;
            ~2x faster on CPUs with AVX512-BF16/AMX and on GPUs; 99.87-100% of units equal to
            fp32 on HuBERT-base, see benchmarks/bench_units_vs_reference.py).
        use_speaker: normalise F0 with the manifest speaker's statistics when the tokenizer
            knows the speaker (otherwise each utterance's own mean).
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are); 1: the same tokens on any core count.
            To use more cores, run several shards in parallel.
        allow_skips: exit with status 0 even when some utterances were skipped.
        overwrite: tokenize every utterance again and replace OUT when done (OUT must be this
            shard's own file: with several shards use ``{shard}`` in its name).
    """
    shard, num_shards, source, out, device = _check_tokenize_flags(manifest, speech_tokenizer, out, shard, num_shards, device)
    target = _shard_target(manifest, out, overwrite, shard, num_shards)

    from spiritlm.numerics import threads as pinned_threads
    from .speech_tokenizer import SpeechTokenizer

    try:
        with pinned_threads(threads):  # callers in the same process (e.g. the demo) keep their own setting
            tok = SpeechTokenizer.load(speech_tokenizer, device=device, precision=precision)
            report = tokenize_manifest(manifest, tok, target, shard, num_shards, batch_size, use_speaker,
                                       batch_seconds=batch_seconds or None)
        if target != out:
            # atomic: a resumable appender (other shards append to `target`), renamed once whole on --overwrite
            os.replace(target, out)
    finally:
        if target != out and os.path.exists(target):
            os.remove(target)
    _report(report, manifest, out, shard, num_shards, source, precision, allow_skips)


def _check_tokenize_flags(manifest: str, speech_tokenizer: str, out: str, shard: int | None, num_shards: int | None,
                          device: str) -> tuple[int, int, str, str, str]:
    """``(shard, num_shards, where they came from, out, device)`` of ``tokenize``'s flags and the
    launcher's environment; a one-line UserError naming the flag for a missing input or a bad shard."""
    from spiritlm.errors import UserError

    if not os.path.isfile(manifest):
        raise UserError(f"{manifest}: no such file (--manifest)")
    if not os.path.isdir(speech_tokenizer):
        raise UserError(f"{speech_tokenizer}: no such speech tokenizer directory (--speech_tokenizer)")
    shard, num_shards, source = shard_from_env(shard, num_shards)
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num_shards {num_shards}; from {source})")
    out = out.replace("{shard}", str(shard))  # one file per shard, e.g. on a network file system
    if device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():  # torchrun: one GPU per process
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return shard, num_shards, source, out, device


def _shard_target(manifest: str, out: str, overwrite: bool, shard: int, num_shards: int) -> str:
    """The file this shard appends to (``_check_out``), the manifest read first so that a bad line
    is reported before the tokenizer loads."""
    from ..corpus.manifest import read_audio_manifest
    from spiritlm.errors import UserError

    try:
        items = read_audio_manifest(manifest)  # a bad line is reported before the tokenizer loads
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{e} (--manifest)") from None
    return _check_out(out, overwrite, {it.id for i, it in enumerate(items) if i % num_shards == shard}, num_shards)


def _report(report, manifest: str, out: str, shard: int, num_shards: int, source: str, precision: str,
            allow_skips: bool) -> None:
    """Writes (or clears) the shard's ``.errors.json``, prints the end line and the skips; a
    UserError when everything, or without ``allow_skips`` anything, was skipped."""
    from spiritlm.errors import UserError

    err_path = out + ".errors.json" if num_shards == 1 else f"{out}.shard{shard}-of-{num_shards}.errors.json"
    if report.errors:
        from spiritlm.atomic import atomic_file

        with atomic_file(err_path) as f:
            json.dump({"skipped": report.skipped, "errors": report.errors}, f, indent=1)
    elif os.path.exists(err_path):
        os.remove(err_path)
    speed = report.audio_seconds / report.wall_seconds if report.wall_seconds else 0.0
    print(f"tokenize: {report.written} written, {report.already_done} already in {out}, {report.skipped} skipped; "
          f"shard {shard}/{num_shards} ({source}): {report.audio_seconds:.0f} s of audio in {report.wall_seconds:.0f} s "
          f"({speed:.1f} s of audio per second, {precision})")
    if report.torn_lines:
        print(f"  {out}: {report.torn_lines} torn line(s) from an interrupted run ignored (their utterances were redone); "
              "delete them once every shard has finished", file=sys.stderr)
    for e in report.errors:
        print(f"  skipped {e['id']}: {e['error']}", file=sys.stderr)
    if report.errors:
        print(f"  (listed in {err_path})", file=sys.stderr)
        total = report.written + report.already_done + report.skipped
        if report.written + report.already_done == 0:
            raise UserError(f"{manifest}: every utterance of shard {shard} was skipped ({report.skipped}; see {err_path})")
        if not allow_skips:
            raise UserError(f"{manifest}: {report.skipped} of {total} utterances skipped (listed in {err_path}); "
                            "pass --allow_skips true to accept")


COMMANDS = tokenize
