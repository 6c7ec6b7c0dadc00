"""Speed of ``spiritlm corpus import hf`` on a dataset with embedded audio.

Builds a DatasetDict (train / test) of N synthetic 16 kHz clips of D seconds, their FLAC bytes held
inside the dataset (as on the Hub), saved with ``save_to_disk`` and as parquet; then times the
import of each (every clip decoded once to check it and written to OUT/audio/) and a rerun of the
save_to_disk import after its manifest was removed (an interrupted run: the audio is reused).
Speed: seconds of audio imported per second of wall time (x real time), one process.

    python benchmarks/bench_import_hf.py                      # 400 clips of 6 s (40 min of audio), ~1 min
    python benchmarks/bench_import_hf.py --num 2000 --seconds 10 --work DIR

Prints one JSON object (also written to WORK/bench_import_hf.json) with the machine and the command.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(work: Path, num: int, seconds: float) -> float:
    """Writes WORK/saved (save_to_disk) and WORK/parquet; returns the seconds of audio."""
    import soundfile as sf
    from datasets import Audio, Dataset, DatasetDict

    rng = np.random.default_rng(0)
    rows = []
    for i in range(num):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.02 * rng.standard_normal(t.size)
        buf = io.BytesIO()
        sf.write(buf, wav.astype(np.float32), 16000, format="FLAC", subtype="PCM_16")
        rows.append({"id": f"utt{i:06d}", "audio": {"bytes": buf.getvalue(), "path": f"utt{i:06d}.flac"},
                     "text": f"utterance number {i}", "speaker_id": i % 20})
    cut = num * 9 // 10
    dd = DatasetDict(train=Dataset.from_list(rows[:cut]), test=Dataset.from_list(rows[cut:]))
    dd = dd.cast_column("audio", Audio())
    dd.save_to_disk(str(work / "saved"))
    (work / "parquet").mkdir()
    for split, ds in dd.items():
        ds.to_parquet(str(work / "parquet" / f"{split}-00000-of-00001.parquet"))
    return num * seconds


def timed_import(src: Path, out: Path) -> float:
    from spiritlm.cli import main

    t = time.perf_counter()
    main(["corpus", "import", "hf", "--src", str(src), "--out", str(out)])
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=400, help="clips")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per clip")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_import_hf_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    audio_s = build(work, args.num, args.seconds)
    t_build = time.perf_counter() - t
    import spiritlm.cli  # noqa: F401 (imported before the clock starts)

    t_saved = timed_import(work / "saved", work / "out_saved")
    t_parquet = timed_import(work / "parquet", work / "out_parquet")
    (work / "out_saved" / "manifest.jsonl").unlink()  # as if interrupted before the manifest
    t_resume = timed_import(work / "saved", work / "out_saved")
    size = sum(f.stat().st_size for f in (work / "saved").rglob("*.arrow"))
    result = {
        "clips": args.num,
        "audio_seconds": audio_s,
        "dataset_mb": round(size / 1e6, 1),
        "save_to_disk": {"wall_seconds": round(t_saved, 2), "x_real_time": round(audio_s / t_saved, 1),
                         "clips_per_second": round(args.num / t_saved, 1)},
        "parquet": {"wall_seconds": round(t_parquet, 2), "x_real_time": round(audio_s / t_parquet, 1)},
        "rerun_after_interruption": {"wall_seconds": round(t_resume, 2), "x_real_time": round(audio_s / t_resume, 1)},
        "build_seconds": round(t_build, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or ''}, python {platform.python_version()}, "
                   f"load {os.getloadavg()[0]:.1f}",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    (work / "bench_import_hf.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
