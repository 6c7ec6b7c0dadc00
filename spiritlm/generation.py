"""Generating interleaved text and speech with a Spirit LM: the :class:`SpiritLM` class.

The API follows Meta's release in spirit (own code)::

    lm = SpiritLM.from_pretrained("runs/tiny-interleaved", speech_tokenizer=tok, vocoder=voc)
    out = lm.generate([("text", "the cat sat on")], output_modality="speech", max_new_tokens=100)
    out[0].modality, out[0].content  # "speech", a waveform (vocoder) or "[Hu12][Hu7]…"

The prompt is the inputs rendered with modality markers (``[Text]the cat``,
``[Speech][Hu12]…``), followed by the marker of the requested output modality when it differs
from the last input's. Decoding is incremental with fairseq2's KV cache
(``IncrementalStateBag``); a vocabulary mask forbids the other modality's tokens (and the
markers, BOS and vocabulary padding): text output never contains a speech token and speech
output contains only speech tokens (``[HuN]``, ``[PiN]``, ``[StN]``) and EOS. ``"arbitrary"``
lets the model switch modality on its own. Sampling uses temperature, then top-k, then top-p
(nucleus) filtering, the order of Hugging Face's warpers, with a seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from fairseq2.models.llama import LLaMAConfig
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout, IncrementalStateBag

from spiritlm.formats import MOST_COMMON_STYLES, SPEECH_MARKER, TEXT_MARKER, parse_speech_string, split_modalities

OutputModality = Literal["text", "speech", "arbitrary"]
InputItem = tuple[str, Any]  # ("text", str) | ("speech", path | array)

__all__ = [
    "SpiritLM",
    "ContinuationScore",
    "GenerationOutput",
    "SpeechTokenizerLike",
    "VocoderLike",
    "build_prompt",
    "decode_tokens",
    "sample_next",
]


class SpeechTokenizerLike(Protocol):
    """Anything that turns audio (path or 16 kHz array) into a speech token string."""

    def encode_string(self, audio: Any) -> str: ...


class VocoderLike(Protocol):
    """Anything that turns a unit dict (``{"hubert": "1 2 …", …}``) into a waveform."""

    def decode(self, units: dict[str, str]) -> Any: ...


@dataclass
class GenerationOutput:
    """One segment of a generation.

    Attributes:
        modality: ``"text"`` or ``"speech"``.
        content: the text; for speech the waveform returned by the vocoder when one is
            configured, otherwise the speech token string (``"[Hu12][Hu7]…"``).
        tokens: the speech token string of a speech segment (``None`` for text).
        units: the unit dict of a speech segment (``formats.string_to_units``).
    """

    modality: str
    content: Any
    tokens: str | None = None
    units: dict[str, str] | None = None


def build_prompt(segments: Sequence[tuple[str, str]], output_modality: OutputModality) -> str:
    """Renders ``[(modality, text_or_token_string), …]`` as an LM prompt.

    Each segment is introduced by its marker; the output modality's marker is appended when it
    differs from the last segment's modality (``"arbitrary"`` appends nothing)::

        >>> build_prompt([("text", "the cat")], "speech")
        '[Text]the cat[Speech]'
    """
    parts: list[str] = []
    last = None
    for modality, content in segments:
        if modality not in ("text", "speech"):
            raise ValueError(f"input modality must be 'text' or 'speech', got {modality!r}")
        parts.append((TEXT_MARKER if modality == "text" else SPEECH_MARKER) + content)
        last = modality
    if output_modality in ("text", "speech") and output_modality != last:
        parts.append(TEXT_MARKER if output_modality == "text" else SPEECH_MARKER)
    elif output_modality not in ("text", "speech", "arbitrary"):
        raise ValueError(f"output_modality must be text, speech or arbitrary, got {output_modality!r}")
    return "".join(parts)


def sample_next(
    logits: Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """Picks the next token from masked logits ``[V]`` (float32; banned entries are ``-inf``).

    Greedy (``do_sample=False``) takes the arg-max (first one on ties, as ``torch.argmax`` and
    Hugging Face do). Sampling divides by ``temperature``, keeps the ``top_k`` best (0: all),
    then the smallest set of best tokens whose probability reaches ``top_p``.
    """
    if not do_sample:
        return int(torch.argmax(logits).item())
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - top_p
        remove[-1] = False  # always keep the best token
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decodes ids to the LM string, speech pieces and markers kept verbatim."""
    return tokenizer.decode(list(ids))


def speech_units_near(tokenizer_file: str | Path) -> dict[str, int] | None:
    """The ``speech_units.json`` beside a tokenizer model (``spiritlm data build`` writes it: the
    units per stream its units file uses), or ``None`` when there is none or it is unreadable."""
    import json

    path = Path(tokenizer_file).with_name("speech_units.json")
    try:
        counts = json.loads(path.read_text())
        counts = {str(k): int(v) for k, v in counts.items()}  # 0: the stream has no units at all
        return counts if counts.get("hubert", 0) > 0 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


class SpiritLM:
    """A Spirit LM ready to generate: fairseq2 LLaMA + text tokenizer (+ speech tokenizer, vocoder).

    Args:
        model: the fairseq2 ``TransformerLM``; put in eval mode.
        config: its ``LLaMAConfig``.
        tokenizer: a :class:`spiritlm.text_tokenizer.SpiritTextTokenizer` (or any object with
            its ``encode``/``decode``/``bos_id``/``eos_id``/``text_marker_id``/
            ``speech_marker_id``/``text_token_mask``/``speech_token_mask`` interface).
        speech_tokenizer: turns speech inputs into token strings (``encode_string``); needed
            only for ``("speech", audio)`` inputs.
        vocoder: turns generated units into waveforms (``decode(units)``); without one, speech
            outputs are returned as token strings.
        num_units: units per stream that exist (``{"hubert": 100, "pitch": 64, "style": 100}``):
            speech outputs never hold ``[HuN]`` with N beyond them, even when the vocabulary has
            more slots (a 100-unit tokenizer in Meta's 501-slot vocabulary). Default: the speech
            tokenizer's ``num_units`` when it has them, else the whole vocabulary.
        speaker: the vocoder's speaker for speech outputs (a row index or a name from its
            ``speakers.txt``; ``vocoder.decode(units, speaker=…)``); None: the vocoder's default.
    """

    def __init__(
        self,
        model: TransformerLM,
        config: LLaMAConfig,
        tokenizer: Any,
        *,
        speech_tokenizer: SpeechTokenizerLike | None = None,
        vocoder: VocoderLike | None = None,
        num_units: dict[str, int] | None = None,
        speaker: int | str | None = None,
    ) -> None:
        self.model = model.eval()
        self.speaker = speaker
        self.config = config
        self.tokenizer = tokenizer
        self.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
        # the speech tokenizer is the authority on the units it can produce (and its vocoder voice)
        self.num_units = dict(getattr(speech_tokenizer, "num_units", None) or num_units or {}) or None
        self._masks: dict[str, Tensor] = {}

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        speech_tokenizer: SpeechTokenizerLike | None = None,
        vocoder: VocoderLike | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer_path: str | Path | None = None,
        speaker: int | str | None = None,
    ) -> "SpiritLM":
        """Loads a model directory.

        ``path`` may be

        * a Hugging Face LLaMA directory (``config.json``, weights, ``tokenizer.model`` with the
          speech pieces), e.g. Meta's ``spirit-lm-base-7b`` or ``spiritlm train``'s ``hf/``
          export;
        * a training run directory (``spiritlm train``'s ``output_dir``): its ``hf/`` export if
          present, otherwise its latest checkpoint;
        * a checkpoint directory holding ``model.safetensors`` + ``model_config.json``.

        Args:
            path: the directory.
            speech_tokenizer: see the class.
            vocoder: see the class.
            device: where to run.
            dtype: parameter dtype (bfloat16 halves the memory of a 7B model on GPU).
            tokenizer_path: the sentencepiece model (default: ``tokenizer.model`` in ``path``
                or a parent directory).
            speaker: see the class.

        The units that exist (see the class) come from the speech tokenizer, else from the
        ``speech_units.json`` next to the tokenizer model (written by ``spiritlm data build``).
        """
        from spiritlm.model import load_any_model

        model, config, found_tok = load_any_model(path, device=device, dtype=dtype)
        tok_file = Path(tokenizer_path) if tokenizer_path else found_tok
        if tok_file is None:
            raise FileNotFoundError(f"{path}: no tokenizer.model in the model directory or its parents")
        from spiritlm.text_tokenizer import SpiritTextTokenizer

        tokenizer = SpiritTextTokenizer.load(tok_file)
        return cls(model, config, tokenizer, speech_tokenizer=speech_tokenizer, vocoder=vocoder,
                   num_units=speech_units_near(tok_file), speaker=speaker)

    # -- vocabulary masks --------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _vocode(self, units: dict[str, str]) -> Any:
        """The vocoder's waveform of a generated unit dict, in :attr:`speaker`'s voice when set."""
        assert self.vocoder is not None
        if self.speaker is None:
            return self.vocoder.decode(units)
        return self.vocoder.decode(units, speaker=self.speaker)  # type: ignore[call-arg]

    def _fallback_style(self) -> int | None:
        """Style filled into a speech output that has pitch but no style token.

        Meta's decoder picks one of its most common styles (71, 68, 98) at random; a vocoder with
        fewer styles (the tiny one has 16) would reject those, so take the first that fits its
        table (or the speech tokenizer's), else 0. None (Meta's choice) when neither is known.
        A vocoder that stores a default style (its most frequent training code) decides.
        """
        default_code = getattr(self.vocoder, "default_code", None)
        if callable(default_code) and (code := default_code("style")) is not None:
            return int(code)
        n = getattr(getattr(self.vocoder, "config", None), "num_style", None) or (self.num_units or {}).get("style")
        if not n:
            return None
        return next((st for st in MOST_COMMON_STYLES if st < int(n)), 0)

    def allowed_tokens(self, output_modality: OutputModality) -> Tensor:
        """Bool mask ``[vocab_size]`` of the ids the model may emit for ``output_modality``.

        ``text``: text pieces and EOS. ``speech``: speech pieces (``[HuN]``, ``[PiN]``,
        ``[StN]``) and EOS. ``arbitrary``: both plus the two markers. Never: BOS, PAD, and the
        rows that pad the vocabulary beyond the tokenizer's pieces.
        """
        if output_modality in self._masks:
            return self._masks[output_modality]
        V = self.config.vocab_size
        tok = self.tokenizer

        def fit(mask: Tensor) -> Tensor:
            mask = torch.as_tensor(mask, dtype=torch.bool).flatten()
            out = torch.zeros(V, dtype=torch.bool)
            n = min(V, mask.numel())
            out[:n] = mask[:n]
            return out

        text = fit(tok.text_token_mask())
        speech = fit(tok.speech_token_mask())
        markers = [tok.text_marker_id, tok.speech_marker_id]
        if output_modality == "text":
            allowed = text.clone()
        elif output_modality == "speech":
            allowed = speech.clone()
        elif output_modality == "arbitrary":
            allowed = text | speech
        else:
            raise ValueError(f"output_modality must be text, speech or arbitrary, got {output_modality!r}")
        for i in markers:
            allowed[i] = output_modality == "arbitrary"
        for name in ("bos_id", "pad_id"):
            i = getattr(tok, name, None)
            if i is not None and 0 <= i < V:
                allowed[i] = False
        for stream, n in (self.num_units or {}).items():  # vocabulary slots no unit fills
            if hasattr(tok, "speech_token_ids") and stream in getattr(tok, "num_units", {}):
                beyond = [i for i in tok.speech_token_ids(stream)[max(0, int(n)):] if i < V]
                allowed[beyond] = False
        eos = tok.eos_id
        if eos is not None and 0 <= eos < V:
            allowed[eos] = True
        self._masks[output_modality] = allowed
        return allowed

    # -- decoding ----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 200,
        allowed: Tensor | None = None,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        seed: int | None = None,
        use_cache: bool = True,
        stop_at_eos: bool = True,
        min_new_tokens: int = 0,
    ) -> list[int]:
        """Continues ``prompt_ids`` by up to ``max_new_tokens`` tokens.

        Args:
            prompt_ids: the prompt, BOS included if wanted.
            max_new_tokens: upper bound on generated tokens (also capped by the model's
                ``max_seq_len``).
            allowed: bool mask ``[vocab_size]`` of emittable ids (``None``: all).
            do_sample: sample (``True``) or take the arg-max.
            temperature, top_p, top_k: sampling parameters (see :func:`sample_next`).
            seed: seeds the sampling generator (``None``: nondeterministic).
            use_cache: decode incrementally with the KV cache; ``False`` recomputes the
                whole sequence at every step (slow; for checks and benchmarks).
            stop_at_eos: stop after emitting EOS (which is then included).
            min_new_tokens: EOS is forbidden until this many tokens are generated (as
                Hugging Face's ``min_new_tokens``).

        Returns:
            The generated ids (prompt excluded).
        """
        if not prompt_ids:
            raise ValueError("generate_ids: empty prompt")
        device = self.device
        max_len = self.config.max_seq_len
        budget = min(max_new_tokens, max_len - len(prompt_ids))
        if budget <= 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in max_seq_len {max_len}")
        gen = None
        if do_sample:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed if seed is not None else int(torch.seed()))
        ban = None if allowed is None else ~allowed.to(device)
        eos = self.tokenizer.eos_id
        seq = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        out: list[int] = []
        state_bag = IncrementalStateBag(len(prompt_ids) + budget) if use_cache else None
        step_input = seq
        for _ in range(budget):
            if use_cache:
                logits = self.model(step_input, BatchLayout.of(step_input), state_bag=state_bag)
                state_bag.increment_step_nr(step_input.size(1))  # type: ignore[union-attr]
            else:
                logits = self.model(seq, BatchLayout.of(seq))
            last = logits[0, -1].float()
            if ban is not None:
                last = last.masked_fill(ban, float("-inf"))
            if len(out) < min_new_tokens and eos is not None and 0 <= eos < last.numel():
                last[eos] = float("-inf")
            nxt = sample_next(
                last.cpu(), do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen
            )
            out.append(nxt)
            if stop_at_eos and nxt == eos:
                break
            step_input = torch.tensor([[nxt]], dtype=torch.long, device=device)
            if not use_cache:
                seq = torch.cat([seq, step_input], dim=1)
        return out

    def _render_input(self, item: InputItem) -> tuple[str, str]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"each input must be (modality, content), got {item!r}")
        modality, content = item
        if modality == "text":
            if not isinstance(content, str):
                raise ValueError("a text input must be a string")
            return "text", content
        if modality == "speech":
            if isinstance(content, str) and content.lstrip().startswith("["):
                parse_speech_string(content)  # "[Hu12][Hu7" is an error, not text pieces
                return "speech", content  # a token string
            if self.speech_tokenizer is None:
                raise ValueError("an audio speech input needs a speech tokenizer (--speech_tokenizer)")
            if isinstance(content, Path):
                content = str(content)
            return "speech", self.speech_tokenizer.encode_string(content)
        raise ValueError(f"input modality must be 'text' or 'speech', got {modality!r}")

    def generate(
        self,
        interleaved_inputs: Sequence[InputItem] | str,
        output_modality: OutputModality = "text",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        do_sample: bool = True,
        seed: int | None = None,
        use_cache: bool = True,
        min_new_tokens: int = 0,
    ) -> list[GenerationOutput]:
        """Continues an interleaved prompt in the requested modality.

        Args:
            interleaved_inputs: ``[("text", str) | ("speech", path | waveform array | token
                string), …]``; a plain string is one text input.
            output_modality: ``"text"``, ``"speech"`` or ``"arbitrary"``.
            max_new_tokens: maximum number of generated tokens.
            temperature: softmax temperature (paper: 0.8).
            top_p: nucleus mass (paper: 0.95).
            top_k: keep the k best tokens (0: off).
            do_sample: sample, or decode greedily.
            seed: sampling seed (reproducible generations).
            use_cache: incremental decoding with the KV cache.
            min_new_tokens: forbid EOS before this many tokens.

        Returns:
            The generated segments in order (see :class:`GenerationOutput`).
        """
        result = self.generate_with_details(
            interleaved_inputs,
            output_modality=output_modality,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            do_sample=do_sample,
            seed=seed,
            use_cache=use_cache,
            min_new_tokens=min_new_tokens,
        )
        return result["outputs"]

    def generate_with_details(
        self, interleaved_inputs: Sequence[InputItem] | str, output_modality: OutputModality = "text", **kwargs: Any
    ) -> dict[str, Any]:
        """As :meth:`generate`; returns ``{"prompt", "prompt_ids", "ids", "string", "outputs"}``."""
        if isinstance(interleaved_inputs, str):
            interleaved_inputs = [("text", interleaved_inputs)]
        if not interleaved_inputs:
            raise ValueError("generate: no inputs")
        rendered = [self._render_input(item) for item in interleaved_inputs]
        prompt = build_prompt(rendered, output_modality)
        prompt_ids = self.tokenizer.encode(prompt, bos=True, eos=False)
        ids = self.generate_ids(prompt_ids, allowed=self.allowed_tokens(output_modality), **kwargs)
        eos = self.tokenizer.eos_id
        body = ids[:-1] if ids and ids[-1] == eos else ids
        string = decode_tokens(self.tokenizer, body)
        # A continuation in the prompt's last modality carries no marker of its own.
        lead = rendered[-1][0] if output_modality == "arbitrary" else output_modality
        segments = split_modalities((TEXT_MARKER if lead == "text" else SPEECH_MARKER) + string)
        outputs = []
        for seg in segments:
            if seg.modality == "text":
                outputs.append(GenerationOutput("text", seg.text))
            else:
                tokens = seg.render()
                units = seg.units(fallback_style=self._fallback_style())
                content: Any = tokens
                if self.vocoder is not None:
                    content = self._vocode(units)
                outputs.append(GenerationOutput("speech", content, tokens=tokens, units=units))
        return {"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "string": string, "outputs": outputs}

    # -- batched decoding and scoring (evaluations) -------------------------------------------

    def generate_batch_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        allowed: Tensor | Sequence[Tensor | None] | None = None,
        max_new_tokens: int = 200,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        seed: int | None = None,
        min_new_tokens: int = 0,
        batch_size: int = 16,
        stop_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        stop_at_eos: bool = True,
        progress: bool = False,
    ) -> list[list[int]]:
        """Continues many prompts at once: left padding, a KV cache, per-row masks and stopping.

        Greedy output is the same as :meth:`generate_ids` run on each prompt alone (same RoPE
        positions, same masks, same arg-max tie rule). Sampling gives prompt ``i`` its own generator
        seeded ``seed + i``, so results do not depend on ``batch_size`` or on the other prompts, and
        prompt ``i`` samples as ``generate_ids(prompts[i], seed=seed + i)`` would (up to float
        rounding of the batched kernels).

        Prompts are sorted by length and cut into batches of ``batch_size``; a finished row leaves
        the batch (and the cache) at once. Tokens/s of the last call are in :attr:`last_stats`.

        Args:
            prompts: token-id lists (BOS included if wanted), each non-empty.
            allowed: bool mask ``[vocab_size]`` for all rows, or one per prompt (``None``: all ids).
            max_new_tokens: per prompt, also capped by ``max_seq_len`` minus its length.
            do_sample, temperature, top_p, top_k: see :func:`sample_next`.
            seed: base seed of the per-row generators (``None``: nondeterministic).
            min_new_tokens: EOS is forbidden before this many tokens.
            batch_size: rows decoded together.
            stop_ids: extra ids that end a row (kept in its output, like EOS): one list for all
                rows or one per prompt (e.g. the modality markers and a newline for ASR).
            stop_at_eos: stop a row after it emits EOS.
            progress: show a tqdm bar over prompts.

        Returns:
            The generated ids of each prompt, in the order of ``prompts`` (prompt excluded).
        """
        import time

        n = len(prompts)
        if n == 0:
            return []
        V = self.config.vocab_size
        max_len = self.config.max_seq_len
        device = self.device
        eos = self.tokenizer.eos_id
        budgets = []
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"generate_batch_ids: prompt {i} is empty")
            budget = min(max_new_tokens, max_len - len(p))
            if budget <= 0:
                raise ValueError(f"prompt {i} of {len(p)} tokens leaves no room in max_seq_len {max_len}")
            budgets.append(budget)
        masks = _per_row_masks(allowed, n, V)
        if stop_ids is None:
            stops: list[set[int]] = [set()] * n
        elif stop_ids and not isinstance(next(iter(stop_ids)), int):
            stops = [set(s) for s in stop_ids]  # type: ignore[arg-type]
            if len(stops) != n:
                raise ValueError(f"stop_ids: {len(stops)} lists for {n} prompts")
        else:
            stops = [set(stop_ids)] * n  # type: ignore[arg-type]
        if stop_at_eos and eos is not None:
            stops = [s | {eos} for s in stops]
        gens: list[torch.Generator | None] = [None] * n
        if do_sample:
            if temperature <= 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
            base = seed if seed is not None else int(torch.seed() % (2**62))
            gens = [torch.Generator(device="cpu").manual_seed(base + i) for i in range(n)]
        outputs: list[list[int]] = [[] for _ in range(n)]
        if not _LeftPaddedDecoder.supports(self.model):  # an unknown architecture: exact fallback
            for i, p in enumerate(prompts):
                outputs[i] = self.generate_ids(
                    p, max_new_tokens=max_new_tokens, allowed=masks[i], do_sample=do_sample, temperature=temperature,
                    top_p=top_p, top_k=top_k, seed=None if seed is None else seed + i, min_new_tokens=min_new_tokens,
                    stop_at_eos=stop_at_eos,
                )
                cut = next((j for j, t in enumerate(outputs[i]) if t in stops[i]), None)
                if cut is not None:  # what stopping there would have produced
                    outputs[i] = outputs[i][: cut + 1]
            return outputs
        order = sorted(range(n), key=lambda i: -len(prompts[i]))
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="generate", unit="prompt")
        with torch.inference_mode():
            for b0 in range(0, n, batch_size):
                rows = order[b0 : b0 + batch_size]
                self._decode_rows(
                    rows, prompts, budgets, masks, stops, gens, outputs, do_sample=do_sample, temperature=temperature,
                    top_p=top_p, top_k=top_k, min_new_tokens=min_new_tokens, device=device,
                )
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        tokens = sum(len(o) for o in outputs)
        self.last_stats = {
            "prompts": n, "new_tokens": tokens, "prompt_tokens": sum(len(p) for p in prompts), "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
        }
        return outputs

    def _decode_rows(
        self,
        rows: list[int],
        prompts: Sequence[Sequence[int]],
        budgets: list[int],
        masks: list[Tensor | None],
        stops: list[set[int]],
        gens: list[torch.Generator | None],
        outputs: list[list[int]],
        *,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        min_new_tokens: int,
        device: torch.device,
    ) -> None:
        """Decodes one batch of prompts (indices ``rows``) into ``outputs`` (see generate_batch_ids)."""
        eos = self.tokenizer.eos_id
        V = self.config.vocab_size
        lengths = [len(prompts[i]) for i in rows]
        W = max(lengths)
        pad = eos if eos is not None and eos >= 0 else 0
        ids = torch.full((len(rows), W), pad, dtype=torch.long, device=device)
        for r, i in enumerate(rows):
            ids[r, W - lengths[r] :] = torch.tensor(list(prompts[i]), dtype=torch.long, device=device)
        ban = torch.zeros(len(rows), V, dtype=torch.bool, device=device)
        for r, i in enumerate(rows):
            if masks[i] is not None:
                ban[r] = ~masks[i].to(device=device, dtype=torch.bool)[:V]  # type: ignore[union-attr]
        capacity = W + max(budgets[i] for i in rows)
        dec = _LeftPaddedDecoder(self.model)
        logits = dec.start(ids, lengths, capacity)
        active = list(rows)  # prompt index of each current batch row
        positions = torch.tensor(lengths, dtype=torch.long, device=device)
        column = W
        while True:
            last = logits.float().masked_fill(ban, float("-inf"))
            if eos is not None and 0 <= eos < V:
                young = torch.tensor([len(outputs[i]) < min_new_tokens for i in active], device=device)
                last[:, eos] = last[:, eos].masked_fill(young, float("-inf"))
            if do_sample:
                cpu = last.cpu()
                picks = [
                    sample_next(cpu[r], do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, generator=gens[i])
                    for r, i in enumerate(active)
                ]
            else:
                picks = torch.argmax(last, dim=-1).tolist()
            keep = []
            for r, (i, tok) in enumerate(zip(active, picks)):
                outputs[i].append(int(tok))
                if int(tok) not in stops[i] and len(outputs[i]) < budgets[i]:
                    keep.append(r)
            if not keep:
                return
            if len(keep) < len(active):
                idx = torch.tensor(keep, dtype=torch.long, device=device)
                dec.keep(idx)
                ban, positions = ban[idx], positions[idx]
                active = [active[r] for r in keep]
                picks = [picks[r] for r in keep]
            step_ids = torch.tensor(picks, dtype=torch.long, device=device)
            logits = dec.step(step_ids, positions, column)
            positions = positions + 1
            column += 1

    def score_continuations(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[ContinuationScore]:
        """Log-probabilities of ``continuations[i]`` after ``prompts[i]`` (natural log).

        Each pair is scored as one sequence ``prompt + continuation``; pairs are sorted by length
        and run ``batch_size`` at a time as right-padded batches (fairseq2's ``BatchLayout`` with
        ``seq_lens``), and only the continuation positions go through the output projection (the
        full ``[B, L, V]`` logits of a 7B model would not fit). A prompt shared by several
        continuations (one prompt, many candidate labels) runs once and its keys/values are
        reused by its continuations (``batch_size`` at a time). The result equals scoring each
        pair alone up to float rounding.

        Args:
            prompts: token-id lists, each non-empty (include BOS if the model was trained with it).
            continuations: token-id lists (an empty one scores 0).
            batch_size: sequences per forward pass.
            progress: show a tqdm bar.

        Returns:
            One :class:`ContinuationScore` per pair, in input order.
        """
        import time

        if len(prompts) != len(continuations):
            raise ValueError(f"score_continuations: {len(prompts)} prompts but {len(continuations)} continuations")
        max_len = self.config.max_seq_len
        seqs = []
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            if not p:
                raise ValueError(f"score_continuations: prompt {i} is empty")
            if len(p) + len(c) > max_len:
                raise ValueError(f"score_continuations: pair {i} has {len(p) + len(c)} tokens > max_seq_len {max_len}")
            seqs.append(list(p) + list(c))
        results: list[ContinuationScore | None] = [None] * len(seqs)
        # a prompt shared by several non-empty continuations runs once (its KV cache is reused)
        shared: dict[tuple[int, ...], list[int]] = {}
        if _LeftPaddedDecoder.supports(self.model):
            for i, (p, c) in enumerate(zip(prompts, continuations)):
                if c:
                    shared.setdefault(tuple(p), []).append(i)
            shared = {p: idx for p, idx in shared.items() if len(idx) > 1}
        in_shared = {i for idx in shared.values() for i in idx}
        order = sorted((i for i in range(len(seqs)) if i not in in_shared), key=lambda i: -len(seqs[i]))
        device = self.device
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(seqs), desc="score", unit="seq")
        with torch.inference_mode():
            for p, idx in shared.items():
                per_cont = _LeftPaddedDecoder(self.model).prefix_logprobs(p, [continuations[i] for i in idx], batch_size)
                for i, lps in zip(idx, per_cont):
                    results[i] = ContinuationScore(sum_logprob=float(sum(lps)), token_logprobs=lps)
                if bar is not None:
                    bar.update(len(idx))
            for b0 in range(0, len(order), batch_size):
                rows = order[b0 : b0 + batch_size]
                lens = [len(seqs[i]) for i in rows]
                W = max(lens)
                ids = torch.zeros(len(rows), W, dtype=torch.long, device=device)
                for r, i in enumerate(rows):
                    ids[r, : lens[r]] = torch.tensor(seqs[i], dtype=torch.long, device=device)
                layout = BatchLayout.of(ids, lens if min(lens) < W else None)
                x, layout = self.model.decoder_frontend(ids, layout)
                hidden = self.model.decoder(x, layout)  # [B, W, M]
                # position t predicts token t + 1: gather the positions before each continuation token
                sel_b, sel_t, targets, owner = [], [], [], []
                for r, i in enumerate(rows):
                    n_p, n_c = len(prompts[i]), len(continuations[i])
                    for j in range(n_c):
                        sel_b.append(r)
                        sel_t.append(n_p - 1 + j)
                        targets.append(seqs[i][n_p + j])
                        owner.append(i)
                if sel_b:
                    h = hidden[torch.tensor(sel_b, device=device), torch.tensor(sel_t, device=device)]
                    logp = self.model.final_proj(h).float().log_softmax(-1)
                    tok_lp = logp.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).tolist()
                else:
                    tok_lp = []
                per: dict[int, list[float]] = {i: [] for i in rows}
                for i, lp in zip(owner, tok_lp):
                    per[i].append(float(lp))
                for i in rows:
                    results[i] = ContinuationScore(sum_logprob=float(sum(per[i])), token_logprobs=per[i])
                if bar is not None:
                    bar.update(len(rows))
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        # tokens run through the model: shared prompts once
        tokens = sum(len(seqs[i]) for i in order) + sum(len(p) + sum(len(continuations[i]) for i in idx)
                                                         for p, idx in shared.items())
        self.last_stats = {"sequences": len(seqs), "tokens": tokens, "seconds": seconds,
                           "tokens_per_s": tokens / seconds if seconds > 0 else float("inf")}
        return [r for r in results if r is not None]

    def generate_batch(
        self,
        inputs: Sequence[Sequence[InputItem] | str],
        output_modality: OutputModality | Sequence[OutputModality] = "text",
        **kwargs: Any,
    ) -> list[list[GenerationOutput]]:
        """:meth:`generate` for many prompts at once (keyword arguments of :meth:`generate_batch_ids`).

        ``output_modality`` is one modality for all prompts or one per prompt; each row gets its
        modality's vocabulary mask. Returns the segments of each prompt, in input order.
        """
        n = len(inputs)
        modalities = [output_modality] * n if isinstance(output_modality, str) else list(output_modality)
        if len(modalities) != n:
            raise ValueError(f"generate_batch: {len(modalities)} output modalities for {n} inputs")
        rendered_all, prompt_ids = [], []
        for items, modality in zip(inputs, modalities):
            if isinstance(items, str):
                items = [("text", items)]
            if not items:
                raise ValueError("generate_batch: an input list is empty")
            rendered = [self._render_input(item) for item in items]
            rendered_all.append(rendered)
            prompt_ids.append(self.tokenizer.encode(build_prompt(rendered, modality), bos=True, eos=False))
        allowed = [self.allowed_tokens(m) for m in modalities]
        kwargs.setdefault("do_sample", True)
        ids_all = self.generate_batch_ids(prompt_ids, allowed=allowed, **kwargs)
        return [self._outputs_of(ids, rendered, m) for ids, rendered, m in zip(ids_all, rendered_all, modalities)]

    def _outputs_of(
        self, ids: Sequence[int], rendered: Sequence[tuple[str, str]], output_modality: str
    ) -> list[GenerationOutput]:
        """Generated ids → segments (as :meth:`generate_with_details` builds them)."""
        eos = self.tokenizer.eos_id
        body = list(ids[:-1]) if ids and ids[-1] == eos else list(ids)
        string = decode_tokens(self.tokenizer, body)
        lead = rendered[-1][0] if output_modality == "arbitrary" else output_modality
        outputs = []
        for seg in split_modalities((TEXT_MARKER if lead == "text" else SPEECH_MARKER) + string):
            if seg.modality == "text":
                outputs.append(GenerationOutput("text", seg.text))
            else:
                tokens, units = seg.render(), seg.units(fallback_style=self._fallback_style())
                content: Any = self._vocode(units) if self.vocoder is not None else tokens
                outputs.append(GenerationOutput("speech", content, tokens=tokens, units=units))
        return outputs


# ---------------------------------------------------------------------------------------------
# Batched decoding and scoring (used by the evaluations)
# ---------------------------------------------------------------------------------------------


@dataclass
class ContinuationScore:
    """Log-probability of a continuation given its prompt (natural log).

    Attributes:
        sum_logprob: ``sum(token_logprobs)``.
        token_logprobs: ``log p(c_i | prompt, c_<i)`` for each continuation token, in order.
    """

    sum_logprob: float
    token_logprobs: list[float]


class _LeftPaddedDecoder:
    """Runs a fairseq2 LLaMA ``TransformerLM`` on left-padded batches with its own KV cache.

    fairseq2 0.8.1's ``BatchLayout`` describes right padding only (``position_indices`` are
    ``0..len-1`` then ``-1``), and its incremental attention refuses padded batches
    (``"`keys` must not be a padded batch."``). Left padding is what batched decoding needs (every
    row's next token lands in the same column), so this class calls the model's own modules
    (embedding, RMSNorms, projections, GLU FFN, the ``RotaryEncoder``'s frequency table) with
    explicit per-row positions and a key mask:

    * row ``b`` with ``p_b`` pad columns gives its real tokens RoPE positions ``0, 1, …`` (the
      positions one-at-a-time decoding uses, so greedy paths agree);
    * keys in pad columns are masked out; a pad query attends to itself only (so no row of the
      attention is empty, which would give NaN); its output is never read.

    The cache holds ``k``/``v`` per layer, ``[B, H_kv, T, head_dim]``, preallocated for the
    longest row; finished rows are dropped from it (:meth:`keep`).
    """

    def __init__(self, model: TransformerLM) -> None:
        self.model = model
        self.layers = list(model.decoder.layers)  # type: ignore[attr-defined]
        self.final_norm = getattr(model.decoder, "layer_norm", None)
        attn0 = self.layers[0].self_attn
        self.freqs = torch.view_as_complex(attn0.pos_encoder.freqs.float())  # [max_seq_len + 1, E / 2]
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.key_valid: Tensor | None = None  # [B, T] bool

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` has the pre-norm LLaMA structure this decoder reimplements."""
        from fairseq2.models.transformer import CausalAttentionBias, TransformerNormOrder
        from fairseq2.nn import RotaryEncoder

        try:
            layers = list(model.decoder.layers)
            if getattr(model.decoder_frontend, "pos_encoder", None) is not None:
                return False
            if getattr(model.decoder_frontend, "scale", 1.0) != 1.0:
                return False
            for layer in layers:
                attn = layer.self_attn
                if layer.norm_order != TransformerNormOrder.PRE or not isinstance(attn.pos_encoder, RotaryEncoder):
                    return False
                if attn.q_norm is not None or attn.k_norm is not None or getattr(attn, "v_norm", None) is not None:
                    return False
                bias = attn.sdpa.bias
                if not isinstance(bias, CausalAttentionBias) or getattr(bias, "attn_window_len", None) is not None:
                    return False
                if getattr(attn.sdpa, "scale", None) is not None:
                    return False
            return bool(layers)
        except AttributeError:
            return False

    def _rope(self, x: Tensor, positions: Tensor) -> Tensor:
        """``x`` ``[B, S, H, D]`` rotated by ``positions`` ``[B, S]`` (``-1``: pad, no rotation data)."""
        freqs = self.freqs[positions + 1]  # row 0 of the table is fairseq2's pad entry
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * freqs.unsqueeze(2)).flatten(-2).type_as(x)

    def start(self, ids: Tensor, lengths: Sequence[int], capacity: int) -> Tensor:
        """Prefills left-padded ``ids`` ``[B, W]`` (row ``b`` real in its last ``lengths[b]``
        columns); allocates ``capacity`` cache columns; returns the last column's logits ``[B, V]``."""
        B, W = ids.shape
        device = ids.device
        lens = torch.tensor(list(lengths), device=device)
        pads = W - lens
        cols = torch.arange(W, device=device)
        positions = cols.unsqueeze(0) - pads.unsqueeze(1)  # [B, W]
        positions = positions.masked_fill(positions < 0, -1)
        self.key_valid = torch.zeros(B, capacity, dtype=torch.bool, device=device)
        self.key_valid[:, :W] = positions >= 0
        dtype = next(self.model.parameters()).dtype
        self.k, self.v = [], []
        for layer in self.layers:
            attn = layer.self_attn
            shape = (B, attn.num_key_value_heads, capacity, attn.head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
        causal = cols.unsqueeze(0) <= cols.unsqueeze(1)  # [W(query), W(key)]
        mask = causal.unsqueeze(0) & self.key_valid[:, None, :W]
        mask |= torch.eye(W, dtype=torch.bool, device=device).unsqueeze(0)
        return self._forward(ids, positions, mask.unsqueeze(1), 0)

    def step(self, ids: Tensor, positions: Tensor, column: int) -> Tensor:
        """Feeds one token per row (``ids``, ``positions`` ``[B]``) written at cache ``column``;
        returns logits ``[B, V]``."""
        assert self.key_valid is not None
        self.key_valid[:, column] = True
        mask = self.key_valid[:, None, None, : column + 1]
        return self._forward(ids.unsqueeze(1), positions.unsqueeze(1), mask, column)

    def keep(self, rows: Tensor) -> None:
        """Keeps only ``rows`` (indices into the current batch) in the cache."""
        assert self.key_valid is not None
        self.key_valid = self.key_valid[rows]
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]

    def prefix_logprobs(self, prompt: Sequence[int], conts: Sequence[Sequence[int]], batch_size: int) -> list[list[float]]:
        """Token log-probs of several continuations of one prompt; the prompt runs once.

        The prompt's keys/values (``[1, H_kv, P, D]``) are shared by the continuations, which run
        ``batch_size`` at a time as one right-padded block at positions ``P, P+1, …`` (a padded
        tail is never attended by the real tokens before it). Continuations must be non-empty.
        """
        device = next(self.model.parameters()).device
        P = len(prompt)
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        first = self.start(ids, [P], P).float().log_softmax(-1)[0]  # predicts each continuation's first token
        prefix_k, prefix_v = self.k, self.v
        out: list[list[float]] = []
        for b0 in range(0, len(conts), batch_size):
            chunk = [list(c) for c in conts[b0 : b0 + batch_size]]
            C, L = len(chunk), max(len(c) for c in chunk)
            block = torch.zeros(C, L, dtype=torch.long, device=device)
            for r, c in enumerate(chunk):
                block[r, : len(c)] = torch.tensor(c, dtype=torch.long, device=device)
            positions = (P + torch.arange(L, device=device)).expand(C, L)
            hidden = self._block(block, positions, prefix_k, prefix_v)  # [C, L, M]
            rows = [r for r, c in enumerate(chunk) for _ in range(len(c) - 1)]
            cols = [j for c in chunk for j in range(len(c) - 1)]
            targets = [c[j + 1] for c in chunk for j in range(len(c) - 1)]
            rest: list[float] = []
            if rows:
                h = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
                logp = self.model.final_proj(h).float().log_softmax(-1)
                rest = logp.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).tolist()
            k = 0
            for c in chunk:
                out.append([float(first[c[0]])] + [float(x) for x in rest[k : k + len(c) - 1]])
                k += len(c) - 1
        return out

    def _block(self, ids: Tensor, positions: Tensor, prefix_k: list[Tensor], prefix_v: list[Tensor]) -> Tensor:
        """Hidden states ``[C, L, M]`` (final norm applied) of a block of ``C`` rows after a shared prefix."""
        from torch.nn.functional import scaled_dot_product_attention

        C, L = ids.shape
        P = prefix_k[0].size(2)
        device = ids.device
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = torch.cat([torch.ones(L, P, dtype=torch.bool, device=device), causal], dim=1)[None, None]
        x = self.model.decoder_frontend.embed(ids)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = self._rope(attn.q_proj(h).unflatten(-1, (-1, attn.head_dim)), positions)
            k = self._rope(attn.k_proj(h).unflatten(-1, (-1, attn.head_dim)), positions)
            v = attn.v_proj(h).unflatten(-1, (-1, attn.head_dim))
            keys = torch.cat([prefix_k[i].expand(C, -1, -1, -1), k.transpose(1, 2)], dim=2)
            values = torch.cat([prefix_v[i].expand(C, -1, -1, -1), v.transpose(1, 2)], dim=2)
            if attn.num_query_groups > 1:
                keys = keys.repeat_interleave(attn.num_query_groups, dim=1)
                values = values.repeat_interleave(attn.num_query_groups, dim=1)
            o = scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
            x = x + attn.output_proj(o.transpose(1, 2).flatten(-2))
            x = x + layer.ffn(layer.ffn_layer_norm(x))
        return self.final_norm(x) if self.final_norm is not None else x

    def _forward(self, ids: Tensor, positions: Tensor, mask: Tensor, column: int) -> Tensor:
        from torch.nn.functional import scaled_dot_product_attention

        S = ids.size(1)
        x, _ = self.model.decoder_frontend(ids, BatchLayout.of(ids))
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = self._rope(attn.q_proj(h).unflatten(-1, (-1, attn.head_dim)), positions)
            k = self._rope(attn.k_proj(h).unflatten(-1, (-1, attn.head_dim)), positions)
            v = attn.v_proj(h).unflatten(-1, (-1, attn.head_dim))
            self.k[i][:, :, column : column + S] = k.transpose(1, 2)
            self.v[i][:, :, column : column + S] = v.transpose(1, 2)
            keys, values = self.k[i][:, :, : column + S], self.v[i][:, :, : column + S]
            if attn.num_query_groups > 1:  # grouped-query attention: kv head j serves heads j*g … j*g+g-1
                keys = keys.repeat_interleave(attn.num_query_groups, dim=1)
                values = values.repeat_interleave(attn.num_query_groups, dim=1)
            o = scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
            x = x + attn.output_proj(o.transpose(1, 2).flatten(-2))
            x = x + layer.ffn(layer.ffn_layer_norm(x))
        last = x[:, -1]
        if self.final_norm is not None:
            last = self.final_norm(last)
        return self.model.final_proj(last)


def _per_row_masks(allowed: Tensor | Sequence[Tensor] | None, n: int, vocab_size: int) -> list[Tensor | None]:
    if allowed is None:
        return [None] * n
    if isinstance(allowed, Tensor):
        return [allowed] * n
    masks = list(allowed)
    if len(masks) != n:
        raise ValueError(f"allowed: {len(masks)} masks for {n} prompts")
    return masks