"""The judges: a CTC ASR and sentiment classifiers, trained here (:mod:`spiritlm.judges.train`) or Hugging Face folders.

Any local Hugging Face folder can be a judge (transformers ``pipeline``:
``automatic-speech-recognition``, ``text-classification``, ``audio-classification``); for the
embedded synthetic corpus, where nothing can be downloaded, :func:`spiritlm.judges.train.train_judges`
trains small ones on the corpus' TRAIN split and measures them on its TEST split before any LM is
judged by them:

* **ASR** (:class:`CtcAsr`, :mod:`spiritlm.corpus.ctc`): log-mel frames (80 bands, 100 Hz,
  per-utterance mean/variance normalisation) -> two 1-D convolutions (the second one stride 2:
  50 Hz) -> a ``torchaudio.models.Conformer`` -> characters, trained with ``torch.nn.CTCLoss``
  and SpecAugment masks (``torchaudio.transforms``), decoded greedily;
* **text sentiment**: scikit-learn ``TfidfVectorizer`` (word 1-2 grams) + ``LogisticRegression``;
* **speech sentiment**: pooled prosodic features of the waveform (:func:`pooled_speech_features`:
  mean/std of 40 log-mel bands, F0 statistics from :mod:`spiritlm.tokenizers.f0`, energy and
  voicing statistics) + ``StandardScaler`` + ``LogisticRegression``. It hears prosody, not words,
  as Meta's emotion classifier does.

A judge directory holds ``judge.json`` (``{"format": "spiritlm-judge", "kind": ...}``); the ASR's
weights are ``model.safetensors``; the scikit-learn judges are stored as their fitted arrays in
JSON and rebuilt on load, so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spiritlm.atomic import atomic_file
from spiritlm.constants import SAMPLE_RATE
from spiritlm.corpus.ctc import JUDGE_FORMAT as FORMAT
from spiritlm.corpus.ctc import AsrConfig, CtcAsr, LogMel
from spiritlm.errors import UserError
from spiritlm.judges import to_sentiment


def normalize_transcript(text: str, alphabet: str) -> str:
    """Lower-cases ``text``, turns characters outside ``alphabet`` into spaces and collapses spaces."""
    text = text.lower()
    allowed = set(alphabet)
    text = "".join(c if c in allowed else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)


#: the flag that names judge folders in the commands that read them (messages)
JUDGE_FLAG = "--judges"


def _read_judge_json(directory: Path, flag: str = JUDGE_FLAG) -> dict | None:
    """``judge.json`` of ``directory`` (None when absent).

    Raises:
        UserError: naming the file and ``flag`` when it is not valid JSON or not a judge's.
    """
    path = directory / "judge.json"
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError: a torn or foreign file
        raise UserError(f"{path}: unreadable judge ({' '.join(str(exc).split())[:120]}); retrain it with "
                        f"`spiritlm eval judges --overwrite true` ({flag})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path}: not a spiritlm judge (format {got!r}) ({flag})")
    return meta


def _judge_json_of_kind(directory: Path, kind: str, what: str) -> dict:
    """``judge.json`` of ``directory`` for a judge of ``kind``; ``what`` names it in the error
    (e.g. "a text sentiment judge")."""
    meta = _read_judge_json(directory)
    if meta is None or meta.get("kind") != kind:
        raise UserError(f"{directory}: not {what} (judge.json kind {kind!r}) ({JUDGE_FLAG})")
    return meta


def _judge_part(path: Path, what: str, read: Callable[[], Any], flag: str = JUDGE_FLAG) -> Any:
    """``read()``, with a truncated or inconsistent judge file raised as one line naming it."""
    try:
        return read()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError, KeyError/TypeError of a foreign judge.json, shape mismatches
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path}: unreadable {what} ({type(exc).__name__}: {reason}); retrain it with "
                        f"`spiritlm eval judges --overwrite true` ({flag})") from None


# =============================================================================================
# ASR
# =============================================================================================


# AsrConfig, LogMel and CtcAsr live in spiritlm/corpus/ctc.py: corpus align uses the same model
# as an aligner (stages import only forward).


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, alphabet: str) -> list[str]:
    """Best path: arg-max per frame, repeats collapsed, blanks (index 0) dropped; ``(B, T, V)`` -> B strings."""
    best = log_probs.argmax(-1).cpu().numpy()
    out = []
    for row, n in zip(best, lengths.cpu().numpy()):
        chars, prev = [], 0
        for idx in row[: int(n)]:
            if idx != prev and idx != 0:
                chars.append(alphabet[idx - 1])
            prev = idx
        out.append(re.sub(r"\s+", " ", "".join(chars)).strip())
    return out


class AsrJudge:
    """A trained :class:`CtcAsr` with its features: ``transcribe(16 kHz waveforms) -> texts``."""

    kind = "asr"

    def __init__(self, model: CtcAsr, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.features = LogMel(model.cfg.n_mels).to(device)
        self.device = torch.device(device)

    @property
    def alphabet(self) -> str:
        return self.model.cfg.alphabet

    @torch.inference_mode()
    def transcribe(self, wavs: Sequence[np.ndarray], batch_size: int = 16) -> list[str]:
        """Transcripts of 16 kHz float waveforms ``(samples,)`` (lower-case, the judge's alphabet)."""
        from spiritlm.tensors import pad_batch

        order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))  # similar lengths share a batch
        texts: dict[int, str] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch, lengths = pad_batch([_min_wav(wavs[i]) for i in idx])
            feats, frames = self.features(batch.to(self.device), lengths.to(self.device))
            lp, n = self.model(feats, frames)
            for i, t in zip(idx, ctc_greedy_decode(lp, n, self.alphabet)):
                texts[i] = t
        return [texts[i] for i in range(len(wavs))]

    def save(self, directory: str | os.PathLike, metrics: dict | None = None) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        from spiritlm.atomic import atomic_path

        with atomic_path(d / "model.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        _write_json(d / "judge.json", {"format": FORMAT, "kind": "asr", "config": asdict(self.model.cfg), "metrics": metrics or {}})

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> AsrJudge:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = _judge_json_of_kind(d, "asr", "an ASR judge directory")
        model = _judge_part(d / "judge.json", "ASR judge config", lambda: CtcAsr(AsrConfig(**meta["config"])))
        weights = d / "model.safetensors"
        if not weights.is_file():
            raise UserError(f"{weights}: missing: an interrupted judge; retrain it with `spiritlm eval judges` ({JUDGE_FLAG})")
        _judge_part(weights, "ASR judge weights", lambda: model.load_state_dict(load_file(str(weights))))
        return cls(model, device)


def _min_wav(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    return w if len(w) >= 400 else np.pad(w, (0, 400 - len(w)))  # one STFT window at least


class HfAsrJudge:
    """A transformers ASR folder (e.g. a ``Wav2Vec2ForCTC`` with its processor) as the ASR judge."""

    kind = "asr"

    def __init__(self, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        from transformers import pipeline

        self.pipe = pipeline("automatic-speech-recognition", model=str(directory), device=torch.device(device))

    def transcribe(self, wavs: Sequence[np.ndarray], batch_size: int = 8) -> list[str]:
        inputs = [{"raw": _min_wav(w), "sampling_rate": SAMPLE_RATE} for w in wavs]
        return [r["text"].strip().lower() for r in self.pipe(inputs, batch_size=batch_size)]


def load_asr_judge(directory: str | os.PathLike, device: str | torch.device = "cpu") -> AsrJudge | HfAsrJudge:
    """The ASR judge of ``directory``: ours (``judge.json``) or a Hugging Face ASR folder (``config.json``)."""
    d = Path(directory)
    if _read_judge_json(d) is not None:
        return AsrJudge.load(d, device)
    if (d / "config.json").is_file():
        return HfAsrJudge(d, device)
    raise FileNotFoundError(f"{d}: not an ASR judge (no judge.json, no Hugging Face config.json)")




# =============================================================================================
# Sentiment judges (scikit-learn, stored as JSON arrays)
# =============================================================================================


def _logreg_to_json(clf) -> dict:
    return {"classes": [str(c) for c in clf.classes_], "coef": clf.coef_.tolist(), "intercept": clf.intercept_.tolist()}


def _logreg_from_json(d: dict):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression()
    clf.classes_ = np.array(d["classes"])
    clf.coef_ = np.array(d["coef"], dtype=np.float64)
    clf.intercept_ = np.array(d["intercept"], dtype=np.float64)
    clf.n_features_in_ = clf.coef_.shape[1]
    return clf


@dataclass
class TextSentimentConfig:
    """Text sentiment judge: TF-IDF of word n-grams + logistic regression.

    Attributes:
        ngram_max: longest word n-gram.
        C: inverse regularisation strength of the logistic regression.
    """

    ngram_max: int = 2
    C: float = 10.0


class TextSentimentJudge:
    """``predict(texts) -> labels`` with a fitted ``TfidfVectorizer`` + ``LogisticRegression``."""

    kind = "text-sentiment"

    def __init__(self, vectorizer, classifier, cfg: TextSentimentConfig):
        self.vectorizer, self.classifier, self.cfg = vectorizer, classifier, cfg

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], cfg: TextSentimentConfig | None = None, seed: int = 0) -> TextSentimentJudge:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        cfg = cfg or TextSentimentConfig()
        vec = TfidfVectorizer(ngram_range=(1, cfg.ngram_max), sublinear_tf=True)
        x = vec.fit_transform(list(texts))
        clf = LogisticRegression(C=cfg.C, max_iter=2000, random_state=seed).fit(x, list(labels))
        return cls(vec, clf, cfg)

    def predict(self, texts: Sequence[str]) -> list[str]:
        if not len(texts):
            return []
        return [str(p) for p in self.classifier.predict(self.vectorizer.transform([t or "" for t in texts]))]

    def save(self, directory: str | os.PathLike, metrics: dict | None = None) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        vec = self.vectorizer
        _write_json(d / "judge.json", {
            "format": FORMAT, "kind": self.kind, "config": asdict(self.cfg), "metrics": metrics or {},
            "vectorizer": {"vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()}, "idf": vec.idf_.tolist()},
            "classifier": _logreg_to_json(self.classifier),
        })

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextSentimentJudge:
        from sklearn.feature_extraction.text import TfidfVectorizer

        d = Path(directory)
        meta = _judge_json_of_kind(d, cls.kind, "a text sentiment judge")

        def build():
            cfg = TextSentimentConfig(**meta["config"])
            vec = TfidfVectorizer(ngram_range=(1, cfg.ngram_max), sublinear_tf=True, vocabulary=meta["vectorizer"]["vocabulary"])
            vec.idf_ = np.array(meta["vectorizer"]["idf"], dtype=np.float64)
            return cls(vec, _logreg_from_json(meta["classifier"]), cfg)

        return _judge_part(d / "judge.json", "text sentiment judge", build)


@dataclass
class SpeechFeatureConfig:
    """Pooled speech features of the speech sentiment judge.

    Attributes:
        n_mels: log-mel bands whose mean and standard deviation over speech frames are kept.
        silence_db: frames quieter than the utterance's loudest frame minus this (dB) are silence.
    """

    n_mels: int = 40
    silence_db: float = 40.0


def pooled_speech_features(wav: np.ndarray, cfg: SpeechFeatureConfig | None = None) -> np.ndarray:
    """One utterance (16 kHz float ``(samples,)``) -> a float64 vector of ``2 * n_mels + 12`` prosodic statistics.

    Log-mel mean and standard deviation over speech frames (10 ms hop); loudness (RMS dB) mean,
    standard deviation and range; the fraction of speech frames; F0 (pyworld DIO, 200 Hz):
    voiced fraction of speech frames, mean, standard deviation, 10th and 90th percentile of
    log-F0 over voiced frames, mean absolute frame-to-frame change of log-F0 (semitone-like
    intonation activity); speech duration in seconds.
    """
    import torchaudio

    from spiritlm.tokenizers.f0 import extract_f0

    cfg = cfg or SpeechFeatureConfig()
    w = _min_wav(wav).astype(np.float32)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=cfg.n_mels)
    logmel = torch.log(mel(torch.from_numpy(w)) + 1e-8).numpy().T  # (frames, n_mels)
    frames = torch.from_numpy(np.pad(w, (200, 200))).unfold(0, 400, 160).numpy()
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-8)
    n = min(len(rms_db), len(logmel))
    rms_db, logmel = rms_db[:n], logmel[:n]
    speech = rms_db > rms_db.max() - cfg.silence_db
    if speech.sum() < 2:
        speech = np.ones_like(speech)
    sm = logmel[speech]
    loud = rms_db[speech]
    f0, vuv = extract_f0(w)
    t_f0 = np.minimum((np.arange(len(f0)) / 2).astype(int), n - 1)  # 200 Hz -> 100 Hz frame index
    voiced = (vuv > 0.5) & speech[t_f0] & (f0 > 0)
    lf0 = np.log(f0[voiced]) if voiced.sum() >= 2 else np.zeros(2)
    delta = np.abs(np.diff(lf0)).mean() if len(lf0) > 2 else 0.0
    stats = [
        loud.mean(), loud.std(), loud.max() - np.percentile(loud, 10), speech.mean(),
        voiced.sum() / max(speech[t_f0].sum(), 1), lf0.mean(), lf0.std(),
        np.percentile(lf0, 10), np.percentile(lf0, 90), delta, speech.sum() / 100.0, len(w) / SAMPLE_RATE,
    ]
    return np.concatenate([sm.mean(0), sm.std(0), np.asarray(stats, dtype=np.float64)]).astype(np.float64)


@dataclass
class SpeechSentimentConfig:
    """Speech sentiment judge: pooled prosodic features + standardisation + logistic regression.

    Attributes:
        features: the pooled features.
        C: inverse regularisation strength.
    """

    features: SpeechFeatureConfig = field(default_factory=SpeechFeatureConfig)
    C: float = 1.0


class SpeechSentimentJudge:
    """``predict(16 kHz waveforms) -> labels`` from :func:`pooled_speech_features`."""

    kind = "speech-sentiment"

    def __init__(self, mean: np.ndarray, scale: np.ndarray, classifier, cfg: SpeechSentimentConfig):
        self.mean, self.scale, self.classifier, self.cfg = mean, scale, classifier, cfg

    def features(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dim)`` standardised features."""
        x = np.stack([pooled_speech_features(w, self.cfg.features) for w in wavs])
        return (x - self.mean) / self.scale

    @classmethod
    def fit(cls, wavs: Sequence[np.ndarray], labels: Sequence[str], cfg: SpeechSentimentConfig | None = None, seed: int = 0) -> SpeechSentimentJudge:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        cfg = cfg or SpeechSentimentConfig()
        x = np.stack([pooled_speech_features(w, cfg.features) for w in wavs])
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=cfg.C, max_iter=5000, random_state=seed).fit(scaler.transform(x), list(labels))
        return cls(scaler.mean_, scaler.scale_, clf, cfg)

    def predict(self, wavs: Sequence[np.ndarray]) -> list[str]:
        if not len(wavs):
            return []
        return [str(p) for p in self.classifier.predict(self.features(wavs))]

    def save(self, directory: str | os.PathLike, metrics: dict | None = None) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / "judge.json", {
            "format": FORMAT, "kind": self.kind, "config": asdict(self.cfg), "metrics": metrics or {},
            "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
            "classifier": _logreg_to_json(self.classifier),
        })

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SpeechSentimentJudge:
        d = Path(directory)
        meta = _judge_json_of_kind(d, cls.kind, "a speech sentiment judge")

        def build():
            c = meta["config"]
            cfg = SpeechSentimentConfig(features=SpeechFeatureConfig(**c["features"]), C=c["C"])
            return cls(np.array(meta["scaler"]["mean"]), np.array(meta["scaler"]["scale"]), _logreg_from_json(meta["classifier"]), cfg)

        return _judge_part(d / "judge.json", "speech sentiment judge", build)


#: Meta's map of its Expresso emotion classifier's labels to sentiments (``EXPRESSO_EMOTION_2_SENTIMENT``).
EXPRESSO_EMOTION_TO_SENTIMENT = {"happy": "positive", "angry": "negative", "sad": "negative", "default": "neutral"}


class HfSentimentJudge:
    """A transformers text or audio classification folder as a sentiment judge.

    Its labels go through :func:`to_sentiment` (emotion classifiers: happy -> positive, ...; on
    the four labels of Meta's Expresso classifier this is Meta's own map,
    :data:`EXPRESSO_EMOTION_TO_SENTIMENT`), or through ``label_map`` when given.

    Args:
        directory: the classifier's folder (``config.json`` and weights).
        task: ``text-classification`` or ``audio-classification``.
        tokenizer: a folder (or hub id already in the local cache) holding the text tokenizer,
            when the classifier's folder has none (Meta's text classifier keeps only weights and
            loads ``j-hartmann/sentiment-roberta-large-english-3-classes``'s tokenizer).
    """

    def __init__(self, directory: str | os.PathLike, task: str, device: str | torch.device = "cpu", label_map: dict[str, str] | None = None,
                 tokenizer: str | os.PathLike | None = None):
        from transformers import pipeline

        if task not in ("text-classification", "audio-classification"):
            raise ValueError(f"task must be text-classification or audio-classification, got {task!r}")
        self.task = task
        self.kind = "text-sentiment" if task == "text-classification" else "speech-sentiment"
        kw = {}
        if tokenizer is not None:
            from transformers import AutoTokenizer

            kw["tokenizer"] = AutoTokenizer.from_pretrained(str(tokenizer))
        self.pipe = pipeline(task, model=str(directory), device=torch.device(device), **kw)
        self.label_map = {k.lower(): v for k, v in (label_map or {}).items()}

    def _map(self, label: str) -> str:
        return self.label_map.get(label.lower(), to_sentiment(label))

    def predict(self, items: Sequence, batch_size: int = 8) -> list[str]:
        """Sentiments of texts or 16 kHz waveforms.

        ``batch_size=1`` on audio scores each clip alone with the feature extractor and the
        model, as Meta's ``predict_audio`` does (arg-max of the logits over every label, no
        padding, no minimum length); larger batches go through the pipeline, which zero-pads.
        """
        if not len(items):
            return []
        if self.task == "text-classification":
            res = self.pipe([t or "" for t in items], batch_size=batch_size, top_k=1)
        elif batch_size == 1:
            return [self._map(self.emotion_of(w)) for w in items]
        else:
            res = self.pipe([{"raw": _min_wav(w), "sampling_rate": SAMPLE_RATE} for w in items], batch_size=batch_size, top_k=1)
        return [self._map((r[0] if isinstance(r, list) else r)["label"]) for r in res]

    @torch.inference_mode()
    def emotion_of(self, wav: np.ndarray) -> str:
        """The classifier's own label (before any sentiment map) of one 16 kHz clip, scored alone."""
        fe, model = self.pipe.feature_extractor, self.pipe.model
        wav = np.asarray(wav, dtype=np.float32)
        if fe.sampling_rate != SAMPLE_RATE:
            import torchaudio

            wav = torchaudio.functional.resample(torch.from_numpy(wav), SAMPLE_RATE, fe.sampling_rate).numpy()
        feats = fe(wav, sampling_rate=fe.sampling_rate, return_tensors="pt").to(model.device)
        logits = model(**feats).logits
        return model.config.id2label[int(logits[0].argmax())]


def load_text_sentiment_judge(directory: str | os.PathLike, device: str | torch.device = "cpu", label_map: dict[str, str] | None = None,
                              tokenizer: str | os.PathLike | None = None):
    """The text sentiment judge of ``directory``: ours (``judge.json``) or a Hugging Face text classifier
    (its tokenizer from ``tokenizer`` when given, else from ``directory``)."""
    d = Path(directory)
    if _read_judge_json(d) is not None:
        if tokenizer is not None:
            raise ValueError(f"{d}: our TF-IDF judge has no separate tokenizer (--text_judge_tokenizer is for Hugging Face classifiers)")
        return TextSentimentJudge.load(d)
    if (d / "config.json").is_file():
        return HfSentimentJudge(d, "text-classification", device, label_map, tokenizer=tokenizer)
    raise FileNotFoundError(f"{d}: not a text sentiment judge (no judge.json, no Hugging Face config.json)")


def load_speech_sentiment_judge(directory: str | os.PathLike, device: str | torch.device = "cpu", label_map: dict[str, str] | None = None):
    """The speech sentiment judge of ``directory``: ours (``judge.json``) or a Hugging Face audio classifier."""
    d = Path(directory)
    if _read_judge_json(d) is not None:
        return SpeechSentimentJudge.load(d)
    if (d / "config.json").is_file():
        return HfSentimentJudge(d, "audio-classification", device, label_map)
    raise FileNotFoundError(f"{d}: not a speech sentiment judge (no judge.json, no Hugging Face config.json)")
