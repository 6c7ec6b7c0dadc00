"""``spiritlm tokenize``: a manifest's audio -> Meta's units JSONL, sharded and resumable."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field


@dataclass
class TokenizeReport:
    """What a run did. ``errors``: ``[{"id", "audio", "error"}]`` of skipped utterances."""

    written: int = 0
    already_done: int = 0
    skipped: int = 0
    torn_lines: int = 0
    errors: list[dict] = field(default_factory=list)


def _existing_ids(path: str) -> tuple[set[str], list[int]]:
    """Ids of the complete records in ``path`` and the numbers of its torn lines.

    A torn line (a writer killed mid-line: not JSON, or no ``id``) is ignored, wherever it is;
    every other line is kept, and the file is never rewritten: other shards' writers may be
    appending to it right now.
    """
    ids: set[str] = set()
    torn: list[int] = []
    if not os.path.exists(path):
        return ids, torn
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ids.add(str(rec["id"]))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                torn.append(lineno)
    return ids, torn


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
) -> TokenizeReport:
    """Tokenizes shard ``shard`` of ``num_shards`` (utterance ``i`` of the manifest goes to shard
    ``i % num_shards``) into ``out``, appending; see :func:`tokenize` for the behaviour."""
    from tqdm import tqdm

    from ..corpus.manifest import read_audio_manifest
    from .utils import load_audio_batch

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in 0..{num_shards - 1} (--num_shards {num_shards}), got {shard}")
    items = [it for i, it in enumerate(read_audio_manifest(manifest)) if i % num_shards == shard]
    done, torn = _existing_ids(out)
    report = TokenizeReport(already_done=sum(it.id in done for it in items), torn_lines=len(torn))
    todo = [it for it in items if it.id not in done]
    bar = tqdm(total=len(todo), desc=f"tokenize shard {shard}/{num_shards}", unit="utt", disable=not progress)
    fout = _LineAppender(out)
    try:
        for i in range(0, len(todo), batch_size):
            batch, wavs = load_audio_batch(todo[i : i + batch_size], report.errors)
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
            bar.update(len(todo[i : i + batch_size]))
    finally:
        fout.close()
        bar.close()
    report.skipped = len(report.errors)
    return report


def tokenize(
    manifest: str,
    tokenizer: str,
    out: str,
    shard: int = 0,
    num_shards: int = 1,
    device: str = "cpu",
    batch_size: int = 8,
    use_speaker: bool = True,
    threads: int = 1,
    allow_skips: bool = False,
) -> None:
    """Tokenizes a manifest's audio into Meta's units JSONL (one line per utterance).

    Each line: {"id", "audio", "hubert", "pitch", "style"} (pitch and style for expressive
    tokenizers), space-separated token ids at 25 / 12.5 / 1 Hz, not deduplicated. Ids already in
    OUT are skipped (rerun to resume); lines torn by a killed run are ignored and their
    utterances redone, every other line is kept. Unusable audio (missing, unreadable, NaN/Inf,
    shorter than 80 ms) is skipped and listed in OUT.errors.json, everything else is still
    written; the command then exits with status 1 unless --allow_skips true (and always when
    nothing could be tokenized).

    Example: spiritlm tokenize --manifest corpus/manifest.jsonl --tokenizer tok/ --out units.jsonl

    Args:
        manifest: JSONL manifest (id, audio; speaker for pitch normalisation).
        tokenizer: tokenizer directory (from spiritlm tokenizer train or assemble).
        out: output JSONL (appended to; shards may share one file).
        shard: index of this shard (0-based).
        num_shards: number of shards; utterance i of the manifest belongs to shard i % num_shards.
        device: cpu, cuda or auto.
        batch_size: utterances per batch.
        use_speaker: normalise F0 with the manifest speaker's statistics when the tokenizer
            knows the speaker (otherwise each utterance's own mean).
        threads: torch CPU threads (1 is fastest on small shared CPUs; 0 keeps torch's default).
            To use more cores, run several shards in parallel.
        allow_skips: exit with status 0 even when some utterances were skipped.
    """
    from spiritlm.errors import UserError

    if not os.path.isfile(manifest):
        raise UserError(f"{manifest}: no such file (--manifest)")
    if not os.path.isdir(tokenizer):
        raise UserError(f"{tokenizer}: no such tokenizer directory (--tokenizer)")
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard {shard}: must be in 0..{num_shards - 1} (--num_shards {num_shards})")

    from ..corpus.manifest import read_audio_manifest
    from .utils import torch_threads
    from .speech_tokenizer import SpeechTokenizer

    try:
        read_audio_manifest(manifest)  # a bad line is reported before the tokenizer loads
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{e} (--manifest)") from None
    with torch_threads(threads):  # callers in the same process (e.g. the demo) keep their own setting
        tok = SpeechTokenizer.load(tokenizer, device=device)
        report = tokenize_manifest(manifest, tok, out, shard, num_shards, batch_size, use_speaker)
    err_path = out + ".errors.json" if num_shards == 1 else f"{out}.shard{shard}-of-{num_shards}.errors.json"
    if report.errors:
        from spiritlm.atomic import atomic_file

        with atomic_file(err_path) as f:
            json.dump({"skipped": report.skipped, "errors": report.errors}, f, indent=1)
    elif os.path.exists(err_path):
        os.remove(err_path)
    print(f"tokenize: {report.written} written, {report.already_done} already in {out}, {report.skipped} skipped")
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
