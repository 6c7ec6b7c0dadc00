"""Silence in a vocoder's resynthesis: voicing, level and DC where the original is silent (issue 17 item 6).

    python benchmarks/bench_vocoder_silence.py --vocoder VOC --manifest corpus/manifest.jsonl --units units.jsonl \
        [--split test] [--max_utts 20] [--ids utt000012,utt000831]

Each utterance of the split is resynthesised from its frame-rate units (as ``spiritlm vocoder eval``).
The original's *silent frames* are its 200 Hz frames (the tokenizer's F0 frames) more than
``vocoder.metrics.SPEECH_FLOOR_DB`` below its loudest frame and unvoiced by the F0 extractor
(pyworld DIO + StoneMask). On those frames it reports, for the original and the resynthesis:

* voiced fraction (the F0 extractor on the waveform): a hum in pauses is voiced;
* RMS level (dBFS, power mean over the frames), and the dominant frequency of the resynthesis
  there (Hz, FFT peak of the silent samples);
* the same level and voicing on the *deep* silent frames only (more than 80 ms from any frame
  that is not silent): a unit is 40 ms, so frames next to speech share units with it;
* DC: the mean sample value over the whole utterance, and its ratio to the utterance's RMS.

Numbers are averaged over utterances (frames pooled for the voiced fraction).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np


#: frames (5 ms) a deep silent frame is away from any frame that is not silent (80 ms: two units)
DEEP_FRAMES = 16


def silence_stats(original: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """The measurements above for one utterance (float32 16 kHz waveforms, same length)."""
    from spiritlm.tokenizers.f0 import extract_f0
    from spiritlm.vocoder.metrics import SPEECH_FLOOR_DB, frame_energy_db

    e = frame_energy_db(original)
    _, vuv = extract_f0(np.asarray(original, dtype=np.float32))
    n = min(len(e), len(vuv))
    silent = (e[:n] < e.max() - SPEECH_FLOOR_DB) & ~(np.asarray(vuv[:n]) > 0)
    out_e = frame_energy_db(output)
    _, out_vuv = extract_f0(np.asarray(output, dtype=np.float32))
    m = min(n, len(out_e), len(out_vuv))
    s = silent[:m]
    # deep: no frame that is not silent within 16 frames (80 ms) either side
    near = np.convolve((~s).astype(float), np.ones(2 * DEEP_FRAMES + 1), mode="same") > 0
    deep = s & ~near
    res = {"silent_frames": int(s.sum()), "deep_frames": int(deep.sum()), "frames": int(m)}
    if s.any():
        res["voiced_out"] = int((np.asarray(out_vuv[:m]) > 0)[s].sum())
        res["voiced_orig"] = int((np.asarray(vuv[:m]) > 0)[s].sum())
        res["rms_db_out"] = float(10 * np.log10(np.mean(10 ** (out_e[:m][s] / 10))))
        res["rms_db_orig"] = float(10 * np.log10(np.mean(10 ** (e[:m][s] / 10))))
    if deep.any():
        res["deep_voiced_out"] = int((np.asarray(out_vuv[:m]) > 0)[deep].sum())
        res["deep_energy_out"] = float(np.sum(10 ** (out_e[:m][deep] / 10)))
        # samples of the silent frames (frame i is centred on sample 80 i)
        idx = np.concatenate([np.arange(max(0, 80 * i - 40), min(len(output), 80 * i + 40)) for i in np.flatnonzero(s)])
        x = output[idx] - output[idx].mean()
        if len(x) >= 1600:
            spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
            freqs = np.fft.rfftfreq(len(x), 1 / 16000)
            band = freqs > 50
            res["peak_hz_out"] = float(freqs[band][np.argmax(spec[band])])
    for name, w in (("out", output), ("orig", original)):
        res[f"dc_{name}"] = float(np.mean(w))
        res[f"dc_ratio_{name}"] = float(abs(np.mean(w)) / (np.sqrt(np.mean(np.square(w))) + 1e-12))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocoder", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--units", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max_utts", type=int, default=20)
    p.add_argument("--ids", default=None, help="comma-separated utterance ids to measure instead of a split's first --max_utts")
    args = p.parse_args()
    import torch

    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.data import load_utterances, read_speakers

    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("command: python " + " ".join(sys.argv))
    voc = Vocoder.from_pretrained(args.vocoder)
    cfg = voc.config
    wanted = set(args.ids.split(",")) if args.ids else None
    utts, _ = load_utterances(args.manifest, args.units, splits=None if wanted else [args.split],
                              speakers=voc.speakers or read_speakers(args.manifest), num_units=cfg.num_units,
                              num_pitch=cfg.num_pitch, num_style=cfg.num_style, max_utts=None if wanted else args.max_utts)
    if wanted:
        utts = [u for u in utts if u.id in wanted]
        if missing := wanted - {u.id for u in utts}:
            sys.exit(f"--ids: not in {args.manifest} with units in {args.units}: {', '.join(sorted(missing))}")
    rows = []
    for u in utts:
        units = {k: u.raw[k] for k in ("hubert", "pitch", "style") if k in u.raw}  # the frame-rate streams as read
        wav = voc.synthesize(units, speaker=u.speaker, dur_pred=False)[: len(u.wav)]
        rows.append(silence_stats(u.wav, wav))
    with_silence = [r for r in rows if r["silent_frames"]]
    tot_sil = sum(r["silent_frames"] for r in with_silence)
    print(f"{len(rows)} utterances of {'--ids' if wanted else f'split {args.split!r}'}, {tot_sil} silent frames of {sum(r['frames'] for r in rows)} (200 Hz)")
    if with_silence:
        print(f"  voiced fraction on silent frames: resynthesis {sum(r['voiced_out'] for r in with_silence) / tot_sil:.3f}, "
              f"original {sum(r['voiced_orig'] for r in with_silence) / tot_sil:.3f}")
        print(f"  RMS on silent frames (dBFS): resynthesis {np.mean([r['rms_db_out'] for r in with_silence]):.1f}, "
              f"original {np.mean([r['rms_db_orig'] for r in with_silence]):.1f}")
        deep = [r for r in with_silence if r["deep_frames"]]
        n_deep = sum(r["deep_frames"] for r in deep)
        if n_deep:
            print(f"  deep silent frames (> 80 ms from speech, {n_deep}): resynthesis voiced fraction "
                  f"{sum(r['deep_voiced_out'] for r in deep) / n_deep:.3f}, RMS "
                  f"{10 * np.log10(sum(r['deep_energy_out'] for r in deep) / n_deep + 1e-30):.1f} dBFS (power mean over frames)")
        peaks = [r["peak_hz_out"] for r in with_silence if "peak_hz_out" in r]
        if peaks:
            print(f"  dominant frequency of the resynthesis on silent frames (Hz): median {np.median(peaks):.0f} "
                  f"(per utterance: {', '.join(f'{x:.0f}' for x in peaks[:10])}{' …' if len(peaks) > 10 else ''})")
    print(f"  DC (mean sample): resynthesis {np.mean([r['dc_out'] for r in rows]):+.2e} (|DC| / RMS {np.mean([r['dc_ratio_out'] for r in rows]):.3f}), "
          f"original {np.mean([r['dc_orig'] for r in rows]):+.2e} (|DC| / RMS {np.mean([r['dc_ratio_orig'] for r in rows]):.3f})")


if __name__ == "__main__":
    main()
