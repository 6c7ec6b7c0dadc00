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
    errors: list[dict] = field(default_factory=list)


def _existing_ids(path: str) -> set[str]:
    """Ids already in ``path``; a truncated last line (interrupted run) is cut off the file."""
    ids: set[str] = set()
    if not os.path.exists(path):
        return ids
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            good += len(line)
    if good != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good)
    return ids


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

    from ._compat import load_audio_batch
    from .manifest import read_items

    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    items = [it for i, it in enumerate(read_items(manifest)) if i % num_shards == shard]
    done = _existing_ids(out)
    report = TokenizeReport(already_done=sum(it.id in done for it in items))
    todo = [it for it in items if it.id not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"tokenize shard {shard}/{num_shards}", unit="utt", disable=not progress)
    with open(out, "a") as fout:
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
            fout.flush()
            bar.update(len(todo[i : i + batch_size]))
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
) -> None:
    """Tokenizes a manifest's audio into Meta's units JSONL (one line per utterance).

    Each line: ``{"id", "audio", "hubert", "pitch", "style"}`` (pitch/style for expressive
    tokenizers), space-separated token ids at 25 / 12.5 / 1 Hz, not deduplicated. Ids already in
    OUT are skipped (rerun to resume); unreadable audio is skipped, counted and listed in
    OUT.errors.json, everything else is still written.

    Args:
        manifest: JSONL manifest (``id``, ``audio``; ``speaker`` for pitch normalisation).
        tokenizer: tokenizer directory (from ``spiritlm tokenizer train`` or ``assemble``).
        out: output JSONL (appended to).
        shard: index of this shard (0-based).
        num_shards: number of shards; utterance i of the manifest belongs to shard i % num_shards.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: utterances per batch.
        use_speaker: normalise F0 with the manifest speaker's statistics when the tokenizer
            knows the speaker (otherwise each utterance's own mean).
        threads: torch CPU threads (1 is fastest on small shared CPUs; 0 keeps torch's default).
            To use more cores, run several shards in parallel.
    """
    from ._compat import torch_threads
    from .speech_tokenizer import SpeechTokenizer

    with torch_threads(threads):  # callers in the same process (e.g. the demo) keep their own setting
        tok = SpeechTokenizer.load(tokenizer, device=device)
        report = tokenize_manifest(manifest, tok, out, shard, num_shards, batch_size, use_speaker)
    err_path = out + ".errors.json"
    if report.errors:
        with open(err_path, "w") as f:
            json.dump({"skipped": report.skipped, "errors": report.errors}, f, indent=1)
    elif os.path.exists(err_path):
        os.remove(err_path)
    print(f"tokenize: {report.written} written, {report.already_done} already in {out}, {report.skipped} skipped")
    for e in report.errors:
        print(f"  skipped {e['id']}: {e['error']}", file=sys.stderr)
    if report.errors:
        print(f"  (listed in {err_path})", file=sys.stderr)


COMMANDS = tokenize
