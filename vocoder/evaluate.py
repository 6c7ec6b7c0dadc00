"""Evaluation of a trained vocoder on a split: resynthesis quality against the original audio, an untrained baseline, pitch/style controls, a figure.

For every utterance of the split, the frame-rate units (+ pitch + style) of the units JSONL are
synthesised without duration prediction by the trained vocoder and by an untrained one (the
same architecture, randomly initialised with the training run's seed), and compared with the
original audio (:mod:`spiritlm.vocoder.metrics`): MCD (dB, frame-aligned), F0 RMSE (cents, frames
voiced in both), voicing error, unit re-tokenization error (the resynthesised audio tokenized
again by the speech tokenizer that made the units, edit rate against the input units; also for
pitch codes and the style-token agreement) and the duration predictor's MAE in frames on the
deduplicated units.

Controls (trained vocoder only), over pairs of utterances ``(A, B)`` of the split:

* pitch: A's units with B's pitch codes. ``before`` = correlation of log F0 of A's own
  resynthesis with B's original F0 (frame by frame, voiced in both), ``after`` = the same for
  the swapped resynthesis; a vocoder that follows its pitch codes moves the correlation up.
* style: A's units and pitch with the style codes of B, an utterance of the same speaker with a
  different style label; for each property (mean F0 in cents, speech energy in dB, voiced
  fraction) the change ``swapped - own`` is compared with the change between B's and A's
  original audio: the fraction of pairs where it has the same sign, the mean ratio, and the
  correlation of the two changes.

Outputs in ``out``: ``metrics.json`` (written atomically), ``resynth.png`` (original vs
resynthesised log-mel spectrogram and F0 of the most voiced of the first 20 utterances), ``wavs/<id>.{trained,untrained}.wav``
for the first few utterances.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SAMPLE_RATE
from ..errors import UserError
from . import metrics as M
from .data import Utterance, load_utterances, read_speakers

logger = logging.getLogger(__name__)

PROPERTIES = ("f0_mean_cents", "energy_db", "voiced_fraction")
#: changes smaller than this are no change (cents, dB, fraction of frames)
TOLERANCE = {"f0_mean_cents": 1.0, "energy_db": 0.01, "voiced_fraction": 0.001}


def _units_dict(u: Utterance, pitch: str | None = None, style: str | None = None) -> dict[str, str]:
    d = {"hubert": u.raw["hubert"]}
    for name, override in (("pitch", pitch), ("style", style)):
        if name in u.raw:
            d[name] = override if override is not None else u.raw[name]
    return d


def _fit_stream(codes: str, n: int) -> str:
    """A stream cut or padded (last code repeated) to ``n`` codes."""
    parts = codes.split()
    parts = parts[:n] + [parts[-1]] * max(0, n - len(parts))
    return " ".join(parts)


def _properties(wav: np.ndarray) -> dict[str, float]:
    from ..tokenizers.f0 import extract_f0

    f0, vuv = extract_f0(np.asarray(wav, dtype=np.float32))
    speech = M.speech_frames(wav)[: len(vuv)]
    return {"f0_mean_cents": M.mean_log_f0(f0), "energy_db": M.speech_energy_db(wav),
            "voiced_fraction": float(vuv[speech].mean()) if speech.any() else float("nan")}


def untrained_like(config, seed: int):
    """A randomly initialised generator of ``config``, built after ``torch.manual_seed(seed)``
    (what the training run started from when trained with that seed)."""
    import torch

    from .model import UnitHifiGAN

    torch.manual_seed(seed)
    return UnitHifiGAN(config)


def resynthesis_metrics(voc, utts: list[Utterance], originals: list[np.ndarray], tokenizer, speakers: list[str],
                        wav_dir: Path | None, tag: str, num_wavs: int, batch_size: int = 8) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Quality of ``voc``'s resynthesis of ``utts`` (see the module docstring); returns ``(metrics, wavs)``."""
    import torch

    from ..audio import save_wav
    from ..formats import deduplicate

    wavs = voc.synthesize_batch([_units_dict(u) for u in utts], speaker=[u.speaker for u in utts], dur_pred=False,
                                batch_size=batch_size)
    mcd, cents, vuv = [], [], []
    for ref, hyp in zip(originals, wavs):
        mcd.append(M.mel_cepstral_distortion(ref, hyp))
        fv = M.f0_and_voicing(ref, hyp)
        cents.append(fv["cents"])
        vuv.append(fv["vuv"])
    out: dict[str, Any] = {
        "mcd_db": float(np.mean(mcd)),
        "f0_rmse_cents": M.rmse(np.concatenate(cents)),
        "f0_frames_voiced_in_both": int(sum(len(c) for c in cents)),
        "vuv_error": float(np.concatenate(vuv).mean()),
    }
    if tokenizer is not None:
        enc = tokenizer.encode_streams([w.astype(np.float32) for w in wavs], [speakers[u.speaker] for u in utts])
        refs = [np.array(u.raw["hubert"].split(), dtype=np.int64) for u in utts]
        out["unit_edit_rate"] = M.unit_edit_rate(refs, [e["hubert"] for e in enc])
        out["unit_edit_rate_dedup"] = M.unit_edit_rate([deduplicate(r.tolist())[0] for r in refs],
                                                       [deduplicate(e["hubert"].tolist())[0] for e in enc])
        if "pitch" in enc[0] and "pitch" in utts[0].raw:
            out["pitch_code_edit_rate"] = M.unit_edit_rate([u.raw["pitch"].split() for u in utts], [e["pitch"] for e in enc])
        if "style" in enc[0] and "style" in utts[0].raw:
            agree = [np.mean(np.array(u.raw["style"].split(), dtype=np.int64)[: len(e["style"])] == e["style"][: len(u.raw["style"].split())])
                     for u, e in zip(utts, enc)]
            out["style_token_agreement"] = float(np.mean(agree))
    if voc.model.duration_predictor is not None:
        errs = []
        with torch.no_grad():
            for u in utts:
                dedup, durs = deduplicate([int(x) for x in u.raw["hubert"].split()])
                log_d = voc.model.predict_durations(torch.tensor([dedup], device=voc.device))[0].float().cpu().numpy()
                errs.append(np.abs(M.duration_frames(log_d) - np.asarray(durs)))
        out["duration_mae_frames"] = float(np.concatenate(errs).mean())
        out["duration_mae_frames_predict_1"] = float(np.mean(np.abs(np.concatenate(
            [np.asarray(deduplicate([int(x) for x in u.raw["hubert"].split()])[1]) for u in utts]) - 1)))
    if wav_dir is not None:
        for u, w in list(zip(utts, wavs))[:num_wavs]:
            save_wav(wav_dir / f"{u.id}.{tag}.wav", np.clip(w, -1, 1), voc.sample_rate)
    return out, wavs


def pitch_control(voc, utts: list[Utterance], originals: list[np.ndarray], own: list[np.ndarray], num_pairs: int) -> dict[str, Any]:
    """A's units with B's pitch codes: correlation of output F0 with B's F0, before and after."""
    from ..tokenizers.f0 import extract_f0

    if "pitch" not in utts[0].raw or not voc.config.num_pitch:
        return {"skipped": "no pitch stream"}
    n = min(num_pairs, len(utts))
    pairs = [(i, (i + 1) % len(utts)) for i in range(n)]
    swapped = voc.synthesize_batch(
        [_units_dict(utts[a], pitch=_fit_stream(utts[b].raw["pitch"], len(utts[a].raw["pitch"].split()))) for a, b in pairs],
        speaker=[utts[a].speaker for a, _ in pairs], dur_pred=False)
    before, after, own_r = [], [], []
    for (a, b), sw in zip(pairs, swapped):
        f0_b = extract_f0(originals[b])[0]
        f0_a = extract_f0(originals[a])[0]
        f0_own = extract_f0(own[a].astype(np.float32))[0]
        f0_sw = extract_f0(sw.astype(np.float32))[0]
        before.append(M.log_f0_correlation(f0_own, f0_b)[0])
        after.append(M.log_f0_correlation(f0_sw, f0_b)[0])
        own_r.append(M.log_f0_correlation(f0_own, f0_a)[0])
    before_a, after_a = np.array(before), np.array(after)
    ok = ~np.isnan(before_a) & ~np.isnan(after_a)
    return {
        "pairs": int(ok.sum()),
        "corr_with_donor_f0_before": float(np.mean(before_a[ok])) if ok.any() else float("nan"),
        "corr_with_donor_f0_after": float(np.mean(after_a[ok])) if ok.any() else float("nan"),
        "fraction_of_pairs_increased": float(np.mean(after_a[ok] > before_a[ok])) if ok.any() else float("nan"),
        "corr_own_resynthesis_with_own_f0": float(np.nanmean(own_r)) if not np.all(np.isnan(own_r)) else float("nan"),
    }


def style_control(voc, utts: list[Utterance], originals: list[np.ndarray], own: list[np.ndarray], styles: list[str | None],
                  speakers: list[str], num_pairs: int) -> dict[str, Any]:
    """A's units and pitch with B's style codes (same speaker, other style label); see the module docstring."""
    if "style" not in utts[0].raw or not voc.config.num_style:
        return {"skipped": "no style stream"}
    pairs = []
    for a in range(len(utts)):
        for b in range(len(utts)):
            if a != b and utts[a].speaker == utts[b].speaker and styles[a] is not None and styles[b] is not None and styles[a] != styles[b]:
                pairs.append((a, b))
                break
        if len(pairs) >= num_pairs:
            break
    if not pairs:
        return {"skipped": "no pair of utterances of one speaker with different style labels"}
    swapped = voc.synthesize_batch(
        [_units_dict(utts[a], style=_fit_stream(utts[b].raw["style"], len(utts[a].raw["style"].split()))) for a, b in pairs],
        speaker=[utts[a].speaker for a, _ in pairs], dur_pred=False)
    out: dict[str, Any] = {"pairs": len(pairs)}
    cache: dict[int, dict[str, float]] = {}

    def props(i: int) -> dict[str, float]:
        if i not in cache:
            cache[i] = _properties(originals[i])
        return cache[i]

    p_swapped = [_properties(sw) for sw in swapped]
    p_own = [_properties(own[a]) for a, _ in pairs]
    for prop in PROPERTIES:
        d_out = [ps[prop] - po[prop] for ps, po in zip(p_swapped, p_own)]
        d_ref = [props(b)[prop] - props(a)[prop] for a, b in pairs]
        d_out_a, d_ref_a = np.array(d_out), np.array(d_ref)
        ok = ~np.isnan(d_out_a) & ~np.isnan(d_ref_a) & (d_ref_a != 0)
        out[prop] = {
            "mean_abs_change_in_corpus": float(np.mean(np.abs(d_ref_a[ok]))) if ok.any() else float("nan"),
            "mean_abs_change_of_output": float(np.mean(np.abs(d_out_a[ok]))) if ok.any() else float("nan"),
            # a change below the property's resolution (e.g. 1e-7 dB of float noise) counts as none
            "same_sign_fraction": float(np.mean(np.sign(np.where(np.abs(d_out_a[ok]) < TOLERANCE[prop], 0.0, d_out_a[ok]))
                                                == np.sign(d_ref_a[ok]))) if ok.any() else float("nan"),
            "mean_ratio_output_to_corpus": float(np.mean(d_out_a[ok] / d_ref_a[ok])) if ok.any() else float("nan"),
            "corr_output_vs_corpus_change": float(np.corrcoef(d_out_a[ok], d_ref_a[ok])[0, 1]) if ok.sum() > 2 else float("nan"),
        }
    style_names = sorted({s for s in styles if s is not None})
    by_style = {}
    for name in style_names:  # the corpus' own differences: up to 10 original utterances per style label
        idx = [i for i in range(len(utts)) if styles[i] == name][:10]
        by_style[name] = {p: float(np.nanmean([props(i)[p] for i in idx])) for p in PROPERTIES}
    out["corpus_properties_by_style"] = by_style
    return out


def plot_resynthesis(path: Path, original: np.ndarray, trained: np.ndarray, untrained: np.ndarray, title: str, sample_rate: int = SAMPLE_RATE) -> None:
    """PNG: log-mel spectrograms of the original and the trained resynthesis, and the F0 of all three."""
    import matplotlib

    matplotlib.use("Agg")
    import librosa
    import matplotlib.pyplot as plt

    from ..tokenizers.f0 import F0_RATE, extract_f0

    n = min(len(original), len(trained), len(untrained))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for ax, wav, name in ((axes[0], original, "original"), (axes[1], trained, "resynthesised (trained vocoder)")):
        mel = librosa.feature.melspectrogram(y=wav[:n].astype(np.float32), sr=sample_rate, n_fft=1024, hop_length=160, n_mels=80)
        ax.imshow(np.log(mel + 1e-5), origin="lower", aspect="auto", extent=(0, n / sample_rate, 0, 80), cmap="magma")
        ax.set_ylabel("mel band")
        ax.set_title(name)
    for wav, name, style in ((original, "original", "k-"), (trained, "trained", "r-"), (untrained, "untrained", "b:")):
        f0 = extract_f0(wav[:n].astype(np.float32))[0]
        t = np.arange(len(f0)) / F0_RATE
        axes[2].plot(t, np.where(f0 > 0, f0, np.nan), style, label=name, linewidth=1)
    axes[2].set_ylabel("F0 (Hz)")
    axes[2].set_xlabel("time (s)")
    axes[2].legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    from spiritlm.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _finite(x):
    """NaN/inf -> None (strict JSON; e.g. an F0 RMSE with no frames voiced in both signals)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def evaluate_vocoder(
    vocoder: str,
    manifest: str,
    units: str,
    out: str,
    *,
    tokenizer: str | None = None,
    split: str = "test",
    max_utts: int | None = None,
    seed: int | None = None,
    control_pairs: int = 20,
    num_wavs: int = 3,
) -> dict[str, Any]:
    """Evaluates ``vocoder`` on ``split`` of ``manifest`` + ``units`` into ``out`` (see the module docstring).

    ``seed``: initialisation seed of the untrained baseline (default: the seed in the vocoder
    folder's ``train_config.json``, else 0). Returns the metrics dict written to ``metrics.json``.
    """
    from ..corpus.manifest import read_audio_manifest
    from .api import Vocoder

    t0 = time.time()
    voc = Vocoder.from_pretrained(vocoder)
    train_cfg = Path(vocoder) / "train_config.json"
    if seed is None:
        seed = int(json.loads(train_cfg.read_text()).get("seed", 0)) if train_cfg.is_file() else 0
    speakers = voc.speakers or read_speakers(manifest)
    cfg = voc.config
    utts, report = load_utterances(manifest, units, splits=[split], speakers=speakers, num_units=cfg.num_units,
                                   num_pitch=cfg.num_pitch, num_style=cfg.num_style, max_utts=max_utts)
    for e in report.errors[:10]:
        logger.info(f"[vocoder eval] skipped {e}")
    styles_by_id = {it.id: it.style for it in read_audio_manifest(manifest)}
    styles = [styles_by_id.get(u.id) for u in utts]
    originals = [u.wav for u in utts]  # the T x 640 samples of the original audio that the units cover
    tok = None
    if tokenizer is not None:
        from ..tokenizers.speech_tokenizer import SpeechTokenizer

        try:
            tok = SpeechTokenizer.load(tokenizer)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"{exc} (--speech_tokenizer)") from None
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info(f"[vocoder eval] {len(utts)} utterances of split {split!r} ({report.skipped} lines skipped)")

    trained, wavs = resynthesis_metrics(voc, utts, originals, tok, speakers, out_dir / "wavs", "trained", num_wavs)
    logger.info(f"[vocoder eval] trained: {json.dumps(trained)}")
    base = Vocoder(untrained_like(cfg, seed), speakers=voc.speakers, styles=voc.styles)
    untrained, base_wavs = resynthesis_metrics(base, utts, originals, tok, speakers, out_dir / "wavs", "untrained", num_wavs)
    logger.info(f"[vocoder eval] untrained: {json.dumps(untrained)}")
    pitch = pitch_control(voc, utts, originals, wavs, control_pairs)
    logger.info(f"[vocoder eval] pitch control: {json.dumps(pitch)}")
    style = style_control(voc, utts, originals, wavs, styles, speakers, control_pairs)
    logger.info(f"[vocoder eval] style control: {json.dumps({k: v for k, v in style.items() if k != 'corpus_properties_by_style'})}")
    # the figure shows the most voiced of the first 20 utterances (F0 is what it is about)
    from ..tokenizers.f0 import extract_f0

    k = int(np.argmax([extract_f0(w)[1].mean() for w in originals[:20]]))
    plot_resynthesis(out_dir / "resynth.png", originals[k], wavs[k], base_wavs[k], f"{utts[k].id}: original vs resynthesised")

    result = {
        "vocoder": str(vocoder), "split": split, "num_utterances": len(utts), "skipped_lines": report.skipped,
        "untrained_seed": seed,
        "method": {"mcd": "WORLD mel-cepstrum (25 coefficients, c0 excluded), frame-aligned (no DTW), reference speech frames",
                   "f0": "pyworld DIO + StoneMask at 200 Hz; RMSE in cents on frames voiced in both",
                   "unit_edit_rate": "Levenshtein distance / reference length, pooled, frame-rate units (dedup: deduplicated)",
                   "duration_mae_frames": "|max(1, round(exp(pred) - 1)) - run length| per deduplicated unit"},
        "trained": trained, "untrained": untrained,
        "control_pitch": pitch, "control_style": style,
        "seconds": round(time.time() - t0, 1),
    }
    from spiritlm.atomic import atomic_file

    with atomic_file(out_dir / "metrics.json") as f:
        f.write(json.dumps(_finite(result), indent=1) + "\n")
    return result
