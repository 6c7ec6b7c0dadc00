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

from spiritlm.formats import SPEECH_MARKER, TEXT_MARKER, split_modalities

OutputModality = Literal["text", "speech", "arbitrary"]
InputItem = tuple[str, Any]  # ("text", str) | ("speech", path | array)

__all__ = [
    "SpiritLM",
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
    """

    def __init__(
        self,
        model: TransformerLM,
        config: LLaMAConfig,
        tokenizer: Any,
        *,
        speech_tokenizer: SpeechTokenizerLike | None = None,
        vocoder: VocoderLike | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = config
        self.tokenizer = tokenizer
        self.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
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
        """
        from spiritlm.model import load_any_model

        model, config, found_tok = load_any_model(path, device=device, dtype=dtype)
        tok_file = Path(tokenizer_path) if tokenizer_path else found_tok
        if tok_file is None:
            raise FileNotFoundError(f"{path}: no tokenizer.model found (pass tokenizer_path)")
        from spiritlm.text_tokenizer import SpiritTextTokenizer

        tokenizer = SpiritTextTokenizer.load(tok_file)
        return cls(model, config, tokenizer, speech_tokenizer=speech_tokenizer, vocoder=vocoder)

    # -- vocabulary masks --------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
            if isinstance(content, str) and content.lstrip().startswith("[") and "]" in content:
                return "speech", content  # already a token string
            if self.speech_tokenizer is None:
                raise ValueError("a speech input needs a speech tokenizer (SpiritLM(speech_tokenizer=…))")
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
                units = seg.units()
                content: Any = tokens
                if self.vocoder is not None:
                    content = self.vocoder.decode(units)
                outputs.append(GenerationOutput("speech", content, tokens=tokens, units=units))
        return {"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "string": string, "outputs": outputs}
