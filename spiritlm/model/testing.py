"""Small fixtures for tests, benchmarks and the no-corpus fallback of the recipes.

* :func:`toy_tokenizer`: a :class:`~spiritlm.text_tokenizer.SpiritTextTokenizer` trained on toy
  sentences (speech pieces appended after the text pieces, as for LLaMA-2);
* :func:`toy_utterances`: aligned "utterances" whose HuBERT units spell their words (each
  character a unit held 1–3 frames, a silence unit between words), so the speech side is
  learnable and predictable from the text;
* :func:`toy_token_dirs`: training and validation token directories made from them with
  :mod:`spiritlm.interleave` and :func:`spiritlm.data.write_token_dir`, in the layout of
  ``spiritlm data build``;
* :func:`tiny_hf_llama`: a random ``transformers.LlamaForCausalLM`` saved to a directory.

Everything is seeded and builds in seconds on a CPU; nothing is downloaded.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "her sister", "the teacher", "a bird", "our neighbour"]
_VERBS = ["saw", "liked", "found", "painted", "carried", "visited", "followed", "remembered"]
_OBJECTS = ["a red ball", "the green house", "a small boat", "the river", "an apple", "the big tree", "a letter", "the market"]
_TAILS = ["in the morning", "after dinner", "near the park", "with great care", "on sunday", "before the rain"]


def toy_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` template sentences (subject verb object tail), seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.7:
            parts.append(rng.choice(_TAILS))
        s = " ".join(parts)
        if rng.random() < 0.5:  # a second clause makes utterances long enough to interleave
            s += " and " + " ".join([rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)])
        out.append(s)
    return out


def toy_tokenizer(
    directory: str | Path | None = None, *, vocab_size: int = 300, num_hubert: int = 64, seed: int = 0, pad_to_multiple: int = 64
):
    """A SpiritTextTokenizer trained on toy sentences (saved as ``directory/tokenizer.model``)."""
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    tok = SpiritTextTokenizer.train(
        toy_sentences(3000, seed), vocab_size=vocab_size, num_hubert=num_hubert, pad_to_multiple=pad_to_multiple
    )
    if directory is not None:
        path = Path(directory) / "tokenizer.model"
        tok.save(path)
        tok = SpiritTextTokenizer.load(path)
    return tok


@dataclass
class _Word:
    word: str
    start: float
    end: float


@dataclass
class _Utt:
    id: str
    duration: float
    text: str
    words: list = field(default_factory=list)
    split: str = "train"


def _char_unit(c: str, num_hubert: int) -> int:
    return 1 + (ord(c) * 7) % (num_hubert - 1)  # unit 0 is silence


def toy_utterances(n: int, *, num_hubert: int = 64, seed: int = 0, prefix: str = "utt") -> tuple[list[_Utt], dict[str, dict]]:
    """``n`` utterances with word alignments and their unit dicts (``{"hubert": "…"}`` at 25 Hz).

    Returns ``(utterances, units_by_id)``; units follow Meta's format (not deduplicated).
    """
    rng = random.Random(seed)
    utts, units = [], {}
    for i, text in enumerate(toy_sentences(n, seed)):
        frames: list[int] = [0] * rng.randint(1, 3)
        words = []
        for w in text.split():
            start = len(frames) / 25.0
            for c in w:
                frames += [_char_unit(c, num_hubert)] * rng.randint(1, 3)
            words.append(_Word(w, start, len(frames) / 25.0))
            frames += [0] * rng.randint(1, 2)
        uid = f"{prefix}{i:05d}"
        utts.append(_Utt(uid, len(frames) / 25.0, text, words))
        units[uid] = {"audio": f"{uid}.wav", "hubert": " ".join(map(str, frames))}
    return utts, units


def toy_token_dir(
    out: str | Path, tokenizer, *, num_utterances: int = 300, seed: int = 0, prefix: str = "utt",
    text_span: tuple[int, int] = (3, 6), speech_span: tuple[int, int] = (2, 4),
) -> Path:
    """Writes a token directory (speech/text/interleaved) of toy utterances; returns ``out``."""
    from spiritlm.data import write_token_dir
    from spiritlm.interleave import InterleaveConfig, SUBSETS, make_documents

    num_hubert = tokenizer.num_units["hubert"]
    utts, units = toy_utterances(num_utterances, num_hubert=num_hubert, seed=seed, prefix=prefix)
    cfg = InterleaveConfig(
        text_span_min=text_span[0], text_span_max=text_span[1], speech_span_min=speech_span[0], speech_span_max=speech_span[1]
    )
    docs: dict[str, list[list[int]]] = {s: [] for s in SUBSETS}
    for utt in utts:
        made, _ = make_documents(utt, units[utt.id], cfg, seed=seed)
        for doc in made:
            docs[doc.subset].append(tokenizer.encode(doc.text))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.model"
    tokenizer.save(tok_path)
    write_token_dir(
        out, docs, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id, tokenizer=str(tok_path),
    )
    return out


def toy_token_dirs(root: str | Path, *, num_train: int = 300, num_val: int = 40, num_hubert: int = 64, seed: int = 0):
    """Tokenizer + ``root/train`` and ``root/valid`` token directories; returns ``(tokenizer, train, valid)``."""
    root = Path(root)
    tok = toy_tokenizer(root, num_hubert=num_hubert, seed=seed)
    train = toy_token_dir(root / "train", tok, num_utterances=num_train, seed=seed, prefix="tr")
    valid = toy_token_dir(root / "valid", tok, num_utterances=num_val, seed=seed + 1, prefix="va")
    return tok, train, valid


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
