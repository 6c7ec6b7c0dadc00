"""Fixtures of the test suite that need the model stack (imported by tests as ``from fixtures import …``).

Data stand-ins (toy tokenizer, utterances, token directories) are in :mod:`spiritlm.data.synthetic`,
which the benchmarks share; what only tests need lives here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from spiritlm.constants import SAMPLE_RATE, UNIT_HOP
from spiritlm.corpus.align import CtcModel
from spiritlm.tokenizers.fairseq_hubert import parse_conv_layers
from spiritlm.vocoder.data import repeat_codes
from spiritlm.vocoder.train import TrainConfig


#: The one real LibriSpeech utterance of shared/data/real (16 kHz FLAC, 146160 samples).
REAL_FLAC = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "7143-88743-0029.flac"
if not REAL_FLAC.exists():  # a worktree under /work/wt or a clone elsewhere: the shared folder is /work/shared
    REAL_FLAC = Path("/work/shared/data/real/7143-88743-0029.flac")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``spiritlm ARGV`` in this process: ``(exit code, stdout, stderr)`` (pytest's ``capsys``)."""
    from spiritlm.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------
# vocoder: a tiny aligned corpus of harmonic tones, and a training config that runs in seconds
# ---------------------------------------------------------------------------------------------

def make_corpus(root, n_utts: int = 6, seed: int = 0, n_units: int = 20, n_pitch: int = 8, n_style: int = 4,
                pause_units: int = 0):
    """A tiny aligned corpus: harmonic tones whose F0 follows the pitch codes, units from the
    codes too (so audio is predictable from units), 2 speakers, splits train/valid/test.

    ``pause_units > 0``: the first and last ``pause_units`` units of each utterance are digital
    silence, with unit ``n_units - 1`` (no tone uses it)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root / "audio", exist_ok=True)
    man, units = [], []
    for i in range(n_utts):
        T = int(rng.integers(30, 60))  # units (1.2 - 2.4 s)
        pitch = rng.integers(0, n_pitch, size=-(-T // 2))
        style = rng.integers(0, n_style, size=-(-T // 25))
        per_unit_pitch = repeat_codes(pitch, 2, T)
        f0 = np.repeat(110.0 * 2 ** (per_unit_pitch / 12.0), UNIT_HOP)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        # a buzz with harmonics up to ~4 kHz plus a little noise: energy in every mel band
        wav = sum(np.sin(k * phase) / k for k in range(1, 25)) * 0.15 + 0.005 * rng.standard_normal(len(phase))
        wav = np.concatenate([wav, np.zeros(int(rng.integers(0, UNIT_HOP)))]).astype(np.float32)  # partial last frame
        pauses = (slice(0, pause_units), slice(T - pause_units, T)) if pause_units else ()
        for sl in pauses:
            wav[sl.start * UNIT_HOP: sl.stop * UNIT_HOP] = 0.0
        uid = f"u{i}"
        sf.write(root / "audio" / f"{uid}.wav", wav, SAMPLE_RATE)
        split = "valid" if i == n_utts - 2 else "test" if i == n_utts - 1 else "train"
        man.append({"id": uid, "audio": f"audio/{uid}.wav", "sample_rate": SAMPLE_RATE, "duration": len(wav) / SAMPLE_RATE,
                    "speaker": f"spk{i % 2}", "style": "default", "text": "x", "words": [], "split": split})
        hub = (per_unit_pitch * 2 + rng.integers(0, 2, size=T)) % (n_units - 1 if pause_units else n_units)
        for sl in pauses:
            hub[sl] = n_units - 1
        units.append({"id": uid, "audio": f"audio/{uid}.wav", "hubert": " ".join(map(str, hub)),
                      "pitch": " ".join(map(str, pitch)), "style": " ".join(map(str, style))})
    with open(root / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in man)
    with open(root / "units.jsonl", "w") as f:
        f.writelines(json.dumps(u) + "\n" for u in units)
    return str(root / "manifest.jsonl"), str(root / "units.jsonl")


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", max_steps=4, batch_size=2, segment_units=4, disc_width_div=32, log_every=1,
                val_every=0, save_every=2, threads=1, max_val_utts=1, num_samples=1)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------
# fairseq HuBERT checkpoints with random weights (the tokenizers' conversion tests)
# ---------------------------------------------------------------------------------------------

CONV = "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 3"  # 25 Hz chain, narrow



def small_cfg(**kw) -> dict:
    cfg = dict(
        extractor_mode="default", encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=48,
        encoder_attention_heads=4, activation_fn="gelu", layer_norm_first=False, conv_feature_layers=CONV,
        conv_bias=False, conv_pos=8, conv_pos_groups=4, final_dim=12, label_rate=25,
    )
    cfg.update(kw)
    return cfg


def random_fairseq_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor a fairseq HuBERT of this config holds, with fairseq's names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    conv = parse_conv_layers(cfg["conv_feature_layers"])
    E, Fd, L = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["encoder_layers"]
    sd: dict[str, torch.Tensor] = {}
    c_in = 1
    for i, (dim, k, _) in enumerate(conv):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = r(dim, c_in, k, scale=0.5)
        if cfg["conv_bias"]:
            sd[f"feature_extractor.conv_layers.{i}.0.bias"] = r(dim)
        if cfg["extractor_mode"] == "default" and i == 0:
            sd["feature_extractor.conv_layers.0.2.weight"] = 1 + r(dim)
            sd["feature_extractor.conv_layers.0.2.bias"] = r(dim)
        if cfg["extractor_mode"] == "layer_norm":
            sd[f"feature_extractor.conv_layers.{i}.2.1.weight"] = 1 + r(dim)
            sd[f"feature_extractor.conv_layers.{i}.2.1.bias"] = r(dim)
        c_in = dim
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + r(c_in), r(c_in)
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = r(E, c_in), r(E)
    sd["mask_emb"] = r(E)
    K, G = cfg["conv_pos"], cfg["conv_pos_groups"]
    sd["encoder.pos_conv.0.weight_g"] = 1 + r(1, 1, K).abs()
    sd["encoder.pos_conv.0.weight_v"] = r(E, E // G, K)
    sd["encoder.pos_conv.0.bias"] = r(E)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + r(E), r(E)
    for i in range(L):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "q_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = r(E, E), r(E)
        sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"] = 1 + r(E), r(E)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(Fd, E), r(Fd)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(E, Fd), r(E)
        sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = 1 + r(E), r(E)
    sd["label_embs_concat"] = r(20, cfg["final_dim"])
    sd["final_proj.weight"], sd["final_proj.bias"] = r(cfg["final_dim"], E), r(cfg["final_dim"])
    return sd


def write_checkpoint(path, cfg, sd, layout):
    if layout == "meta":
        torch.save({"model_cfg": cfg, "task_cfg": {"sample_rate": 16000, "normalize": False, "labels": ["km"]},
                    "model_weight": sd, "dictionaries_symbols": [[str(i) for i in range(20)]]}, path)
    else:
        torch.save({"cfg": {"model": cfg, "task": {"sample_rate": 16000}, "common": {"seed": 1}}, "model": sd}, path)


# ---------------------------------------------------------------------------------------------
# LM
# ---------------------------------------------------------------------------------------------


def tiny_hf_llama(
    directory: str | Path,
    *,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 96,
    max_position_embeddings: int = 256,
    rope_theta: float = 1e5,
    seed: int = 0,
    logit_scale: float = 20.0,
    tokenizer_model: str | Path | None = None,
) -> Path:
    """Saves a random ``transformers.LlamaForCausalLM`` (plus ``tokenizer.model``) to ``directory``.

    ``logit_scale`` multiplies the output table: random models have near-uniform logits, and
    sharper ones keep greedy paths well separated from ties.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, directory / "tokenizer.model")
    return directory


# ---------------------------------------------------------------------------------------------
# An oracle CTC model for the aligner's tests (spiritlm corpus align / segment)
# ---------------------------------------------------------------------------------------------
SR = SAMPLE_RATE
HOP = 320  # samples per emission frame (50 Hz)
LETTERS = "abcdefghijklmnopqrstuvwxyz'"


class ToneCtc(CtcModel):
    """An oracle CTC model: character i is a tone at 250 + 100 i Hz, silence is blank.

    Its emissions come from the audio alone (an FFT per 20 ms frame), so alignment errors are the
    aligner's, and windows of a long recording see the same frames as the whole.
    """

    def __init__(self, star: bool = False):
        self.name = "tone-oracle"
        self.labels = ["<b>", *LETTERS] + (["*"] if star else [])
        self.blank, self.sep = 0, None
        self.star = len(self.labels) - 1 if star else None
        self.sample_rate, self.samples_per_frame = SR, HOP

    def emissions(self, wavs):
        out = []
        for w in wavs:
            n = len(w) // HOP
            frames = np.asarray(w[: n * HOP]).reshape(n, HOP)
            lp = torch.full((n, len(self.labels)), -16.0)
            for t, f in enumerate(frames):
                if np.sqrt(np.mean(f ** 2)) < 1e-3:
                    lp[t, 0] = 0.0
                    continue
                freq = np.argmax(np.abs(np.fft.rfft(f * np.hanning(HOP)))) * SR / HOP
                lp[t, 1 + int(round((freq - 250) / 100)) - 1] = 0.0
                lp[t, 0] = -8.0
            out.append(lp.log_softmax(-1))
        return out


def tone_speech(words: list[str], gaps: list[float], lead: float = 0.3, tail: float = 0.3):
    """Audio of ``words`` (each character two frames of its tone) with ``gaps[i]`` seconds of
    silence before word i+1; returns ``(wav, [(word, start, end)])``."""
    t = np.arange(2 * HOP) / SR
    pieces, spans, now = [np.zeros(int(lead * SR / HOP) * HOP)], [], int(lead * SR / HOP) * HOP
    for i, word in enumerate(words):
        start = now
        for c in word:
            pieces.append(0.3 * np.sin(2 * np.pi * (250 + 100 * (LETTERS.index(c) + 1)) * t))
            now += 2 * HOP
        spans.append((word, start / SR, now / SR))
        gap = int(round((gaps[i] if i < len(gaps) else tail) * SR / HOP)) * HOP
        pieces.append(np.zeros(gap))
        now += gap
    return np.concatenate(pieces).astype(np.float32), spans


def tiny_serve_stack(directory: str | Path, *, num_units: int = 6, seed: int = 0) -> dict[str, Path]:
    """A model, speech tokenizer and vocoder small enough for a test to serve (``spiritlm serve``).

    ``model``: a random LLaMA over the toy text tokenizer; ``speech_tokenizer``: MFCC features
    and ``num_units`` random k-means centres (a base tokenizer: ``[HuN]`` only); ``vocoder``: a
    random tiny unit HiFi-GAN with a duration predictor and two speakers (``alice``, ``bob``).
    Returns the three directories.
    """
    import numpy as np

    from spiritlm.data.synthetic import toy_tokenizer
    from spiritlm.text_tokenizer import SpiritTextTokenizer
    from spiritlm.tokenizers.features import FeatureConfig, load_backend
    from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer, UnitConfig, UnitTokenizer
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    root = Path(directory)
    toy_tokenizer(root / "tok", num_hubert=64)
    tok = SpiritTextTokenizer.load(root / "tok" / "tokenizer.model")
    model = tiny_hf_llama(root / "model", vocab_size=tok.vocab_size, seed=seed + 5, tokenizer_model=root / "tok" / "tokenizer.model")
    features = FeatureConfig(backend="mfcc")
    backend = load_backend(features)
    centers = np.random.default_rng(seed).standard_normal((num_units, backend.dim)).astype(np.float32)
    SpeechTokenizer(UnitTokenizer(backend, centers, UnitConfig(features=features))).save(root / "speech_tokenizer")
    torch.manual_seed(seed)
    cfg = VocoderConfig.preset("tiny", num_units=num_units, num_speakers=2, embedding_dim=8, upsample_initial_channel=32,
                               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], duration_hidden=8)
    Vocoder(UnitHifiGAN(cfg), speakers=["alice", "bob"]).save(root / "vocoder")
    return {"model": model, "speech_tokenizer": root / "speech_tokenizer", "vocoder": root / "vocoder"}


# Each case runs in one fresh interpreter: the error line, and whether torch was imported to get there.
_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from spiritlm.cli import main
    out = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
        out.append({"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules})
    print(json.dumps(out))
    """
)


def run_fresh(cases: list[list[str]]) -> list[dict]:
    """Runs ``spiritlm ARGV`` for each case in ONE fresh interpreter; ``[{"code", "err", "torch"}]`` (torch: imported by then)."""
    res = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])
