"""Generating interleaved text and speech with a Spirit LM: the :class:`SpiritLM` class.

The API follows Meta's release in spirit (own code)::

    lm = SpiritLM.from_pretrained("runs/tiny-interleaved", speech_tokenizer=tok, vocoder=voc)
    out = lm.generate([("text", "the cat sat on")], output_modality="speech", max_new_tokens=100)
    out[0].modality, out[0].content  # "speech", a waveform (vocoder) or "[Hu12][Hu7]…"
    for piece in lm.stream([("text", "the cat")], output_modality="text"):
        print(piece.text, end="")  # as it is decoded

The prompt is the inputs rendered with modality markers (``[Text]the cat``,
``[Speech][Hu12]…``), followed by the marker of the requested output modality when it differs
from the last input's. There is one decoder: every call (one prompt, a batch, a stream, the
evaluations' batches) runs :meth:`SpiritLM._decode`, left-padded batches through
:class:`~spiritlm.generation.decoder.LlamaDecoder` with a static KV cache; one prompt is a batch
of one. A vocabulary mask forbids the other modality's tokens (and the markers, BOS and
vocabulary padding): text output never contains a speech token and speech output contains only
speech tokens (``[HuN]``, ``[PiN]``, ``[StN]``) and EOS. ``"arbitrary"`` lets the model switch
modality on its own. Sampling: temperature, top-k, top-p (Hugging Face's order), per-row seeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from fairseq2.nn import BatchLayout

from spiritlm.formats import MOST_COMMON_STYLES, parse_speech_string
from spiritlm.tensors import pad_batch

from .decoder import LlamaDecoder, use_cpu_weight_layout
from .outputs import (
    GenerationOutput,
    OutputModality,
    PieceDecoder,
    StreamPiece,
    build_prompt,
    segments_of,
    speech_units_near,
)
from .sampling import pick_next

InputItem = tuple[str, Any]  # ("text", str) | ("speech", path | array | token string)

__all__ = ["SpiritLM", "ContinuationScore", "DecodeStats", "SpeechTokenizerLike", "VocoderLike"]


class SpeechTokenizerLike(Protocol):
    """Anything that turns audio (path or 16 kHz array) into a speech token string."""

    def encode_string(self, audio: Any) -> str: ...


class VocoderLike(Protocol):
    """Anything that turns a unit dict (``{"hubert": "1 2 …", …}``) into a waveform."""

    def decode(self, units: dict[str, str]) -> Any: ...


@dataclass
class ContinuationScore:
    """Log-probability of a continuation given its prompt (natural log).

    Attributes:
        sum_logprob: ``sum(token_logprobs)``.
        token_logprobs: ``log p(c_i | prompt, c_<i)`` for each continuation token, in order.
    """

    sum_logprob: float
    token_logprobs: list[float]


@dataclass(frozen=True)
class DecodeStats:
    """What the last decoding or scoring call of a :class:`SpiritLM` ran (:attr:`SpiritLM.last_stats`).

    Attributes:
        kind: ``"generate"`` or ``"score"``.
        sequences: prompts (generation) or prompt/continuation pairs (scoring).
        new_tokens: generated tokens (0 for scoring).
        tokens: tokens run through the model (prompts + generated, shared scoring prompts once).
        seconds: wall-clock seconds of the call.
    """

    kind: str
    sequences: int
    new_tokens: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens/s (generation) or scored tokens/s (scoring)."""
        n = self.new_tokens if self.kind == "generate" else self.tokens
        return n / self.seconds if self.seconds > 0 else float("inf")


def _with_id(ban: Tensor, token: int) -> Tensor:
    """A copy of the bool table ``ban`` ``[B, V]`` with column ``token`` set."""
    out = ban.clone()
    out[:, token] = True
    return out


class SpiritLM:
    """A Spirit LM ready to generate: fairseq2 LLaMA + text tokenizer (+ speech tokenizer, vocoder).

    Args:
        model: the fairseq2 ``TransformerLM`` (pre-norm RoPE LLaMA); put in eval mode, and on
            CPU its projection weights are stored column-major
            (:func:`~spiritlm.generation.decoder.use_cpu_weight_layout`).
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
            more slots (a 100-unit tokenizer in Meta's 501-slot vocabulary), and speech prompts
            holding such a unit are refused. Default: the speech tokenizer's ``num_units`` when
            it has them, else the whole vocabulary.
        speaker: the vocoder's speaker for speech outputs (a row index or a name from its
            ``speakers.txt``; ``vocoder.decode(units, speaker=…)``); None: the vocoder's default.

    Raises:
        spiritlm.errors.UserError: the speech tokenizer or the vocoder does not fit the model
            (see :func:`spiritlm.generation.compat.check_compatible`).

    Attributes:
        last_stats: :class:`DecodeStats` of the last generation or scoring call (None before).
    """

    def __init__(
        self,
        model: Any,
        config: Any,
        tokenizer: Any,
        *,
        speech_tokenizer: SpeechTokenizerLike | None = None,
        vocoder: VocoderLike | None = None,
        num_units: dict[str, int] | None = None,
        speaker: int | str | None = None,
    ) -> None:
        from .compat import check_compatible

        self.model = model.eval()
        use_cpu_weight_layout(self.model)  # faster decoding steps on CPU, same values
        self.speaker = speaker
        self.config = config
        self.tokenizer = tokenizer
        self.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
        check_compatible(tokenizer, num_units, speech_tokenizer, vocoder)
        # the speech tokenizer is the authority on the units it can produce (and its vocoder voice)
        self.num_units = dict(getattr(speech_tokenizer, "num_units", None) or num_units or {}) or None
        self._masks: dict[str, Tensor] = {}
        self.last_stats: DecodeStats | None = None

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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- vocabulary masks --------------------------------------------------------------------

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
        if output_modality == "text":
            allowed = text.clone()
        elif output_modality == "speech":
            allowed = speech.clone()
        elif output_modality == "arbitrary":
            allowed = text | speech
        else:
            raise ValueError(f"output_modality must be text, speech or arbitrary, got {output_modality!r}")
        for i in (tok.text_marker_id, tok.speech_marker_id):
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

    # -- the decoder ---------------------------------------------------------------------------

    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        allowed: Tensor | Sequence[Tensor | None] | None,
        max_new_tokens: int | Sequence[int],
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
        min_new_tokens: int,
        batch_size: int,
        stop_ids: Sequence[int] | Sequence[Sequence[int]] | None,
        stop_at_eos: bool,
        ban_eos: bool,
        use_cache: bool,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """The decoding loop: yields ``(prompt indices, their new tokens)`` at every step.

        Prompts are sorted by length (longest first) and run ``batch_size`` at a time, left padded;
        a row leaves its batch when it emits a stop id or reaches its budget. All of a batch's
        rows start together, so every active row holds the same number of tokens (``t``).
        """
        n = len(prompts)
        V = self.config.vocab_size
        device = self.device
        eos = self.tokenizer.eos_id
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
        if len(budgets) != n:
            raise ValueError(f"max_new_tokens: {len(budgets)} budgets for {n} prompts")
        max_len = self.config.max_seq_len
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            budgets[i] = min(budgets[i], max_len - len(p))
            if budgets[i] <= 0:
                raise ValueError(f"prompt {i} of {len(p)} tokens leaves no room in max_seq_len {max_len}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        # per-row bans and stops as [n, V] bool tables, built once (no per-step Python per row)
        if allowed is None or isinstance(allowed, Tensor):
            masks: list[Tensor | None] = [allowed] * n
        else:
            masks = list(allowed)
            if len(masks) != n:
                raise ValueError(f"allowed: {len(masks)} masks for {n} prompts")
        full = torch.ones(V, dtype=torch.bool)
        ban_all = ~torch.stack([full if m is None else m.to("cpu", torch.bool)[:V] for m in masks])
        if ban_eos and eos is not None and 0 <= eos < V:
            ban_all[:, eos] = True
        if stop_ids is None or len(stop_ids) == 0:
            stop_lists: list[list[int]] = [[] for _ in range(n)]
        elif isinstance(next(iter(stop_ids)), int):
            stop_lists = [list(stop_ids)] * n  # type: ignore[arg-type]
        else:
            stop_lists = [list(s) for s in stop_ids]  # type: ignore[arg-type, union-attr]
            if len(stop_lists) != n:
                raise ValueError(f"stop_ids: {len(stop_lists)} lists for {n} prompts")
        stop_all = torch.zeros(n, V, dtype=torch.bool)
        for i, s in enumerate(stop_lists):
            stop_all[i, [t for t in s if 0 <= t < V]] = True
        if stop_at_eos and eos is not None and 0 <= eos < V:
            stop_all[:, eos] = True
        base = seed if seed is not None else int(torch.seed() % (2**62))
        order = sorted(range(n), key=lambda i: -len(prompts[i]))
        for b0 in range(0, n, batch_size):
            rows = order[b0 : b0 + batch_size]
            yield from self._decode_batch(
                rows, prompts, budgets, ban_all, stop_all, base, device, do_sample=do_sample, temperature=temperature,
                top_p=top_p, top_k=top_k, min_new_tokens=min_new_tokens, use_cache=use_cache,
            )

    def _decode_batch(
        self,
        rows: list[int],
        prompts: Sequence[Sequence[int]],
        budgets: list[int],
        ban_all: Tensor,
        stop_all: Tensor,
        base_seed: int,
        device: torch.device,
        *,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        min_new_tokens: int,
        use_cache: bool,
    ) -> Iterator[tuple[list[int], list[int]]]:
        eos = self.tokenizer.eos_id
        V = self.config.vocab_size
        pad = eos if eos is not None and eos >= 0 else 0
        ids, lens = pad_batch([list(prompts[i]) for i in rows], dtype=torch.long, value=pad, side="left")
        lengths, W = lens.tolist(), ids.shape[1]
        idx = torch.tensor(rows, dtype=torch.long)
        ban = ban_all[idx].to(device)
        stop = stop_all[idx].to(device)
        budget = torch.tensor([budgets[i] for i in rows], device=device)
        seeds = (base_seed + idx).to(device)
        positions = torch.tensor(lengths, dtype=torch.long, device=device)
        active = list(rows)
        dec = LlamaDecoder(self.model)
        if use_cache:
            logits = dec.prefill(ids.to(device), lengths, W + max(budgets[i] for i in rows))
        else:
            seqs = [list(prompts[i]) for i in rows]
            logits = self._full_forward(seqs)
        eos_ok = eos is not None and 0 <= eos < V
        banned = bool(ban.any())
        t = 0
        picks = None  # this step's ids when the decoder picked them (greedy), else from `logits`
        while True:
            if picks is None:
                # the step's logits are a new tensor, used once: masked in place (no [B, V] copy)
                last = logits.float()
                if banned:
                    last.masked_fill_(ban, float("-inf"))
                if eos_ok and t < min_new_tokens:
                    last[:, eos] = float("-inf")
                picks = pick_next(last, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                  seeds=seeds, step=t)
            t += 1
            done = stop.gather(1, picks.unsqueeze(1)).squeeze(1) | (budget <= t)
            tokens = picks.tolist()  # the ids (not the logits) come to the host: outputs and stopping
            yield active, tokens
            if bool(done.all()):
                return
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                ban, stop, budget, seeds, positions, picks = (x[keep] for x in (ban, stop, budget, seeds, positions, picks))
                keep_list = keep.tolist()
                active = [active[r] for r in keep_list]
                if use_cache:
                    dec.keep(keep)
                else:
                    seqs = [seqs[r] for r in keep_list]
                    tokens = [tokens[r] for r in keep_list]
            if use_cache and not do_sample:  # greedy: the decoder picks (no fp32 logits on CPU, see step_greedy)
                excluded = _with_id(ban, eos) if eos_ok and t < min_new_tokens else ban if banned else None
                picks = dec.step_greedy(picks, positions, W + t - 1, excluded)
                positions = positions + 1
            elif use_cache:
                logits = dec.step(picks, positions, W + t - 1)
                positions = positions + 1
                picks = None
            else:
                for s, tok in zip(seqs, tokens):
                    s.append(tok)
                logits = self._full_forward(seqs)
                picks = None

    def _full_forward(self, seqs: list[list[int]]) -> Tensor:
        """Reference path (``use_cache=False``): fairseq2's own forward over whole right-padded
        sequences; the logits ``[B, V]`` at each row's last token."""
        ids, lengths = pad_batch(seqs, dtype=torch.long)
        lens, W = lengths.tolist(), ids.shape[1]
        ids = ids.to(self.device)
        logits = self.model(ids, BatchLayout.of(ids, lens if min(lens) < W else None))
        return logits[torch.arange(len(seqs), device=ids.device), torch.tensor(lens, device=ids.device) - 1]

    # -- ids in, ids out -------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_batch_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        allowed: Tensor | Sequence[Tensor | None] | None = None,
        max_new_tokens: int | Sequence[int] = 200,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        seed: int | None = None,
        min_new_tokens: int = 0,
        batch_size: int = 16,
        stop_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        stop_at_eos: bool = True,
        ban_eos: bool = False,
        use_cache: bool = True,
        progress: bool = False,
    ) -> list[list[int]]:
        """Continues many prompts at once: left padding, a static KV cache, per-row masks and stopping.

        Greedy output does not depend on the batch: prompt ``i`` gets the ids a batch of one would
        (same RoPE positions, same masks, same arg-max tie rule; up to float rounding of the batched
        kernels). Sampling gives prompt ``i`` the seed ``seed + i``, so results do not depend on
        ``batch_size`` or on the other prompts, and prompt ``i`` samples as
        ``generate_ids(prompts[i], seed=seed + i)``. Statistics of the call: :attr:`last_stats`.

        Args:
            prompts: token-id lists (BOS included if wanted), each non-empty.
            allowed: bool mask ``[vocab_size]`` for all rows, or one per prompt (``None``: all ids).
            max_new_tokens: per prompt (one for all or one each), also capped by ``max_seq_len``
                minus the prompt's length.
            do_sample, temperature, top_p, top_k: see :func:`spiritlm.generation.sampling.pick_next`
                (``top_k`` 50 is transformers' default; 0: off).
            seed: base seed of the per-row sampling (``None``: nondeterministic).
            min_new_tokens: EOS is forbidden before this many tokens.
            batch_size: rows decoded together.
            stop_ids: extra ids that end a row (kept in its output, like EOS): one list for all
                rows or one per prompt (e.g. the modality markers and a newline for ASR; leave the
                newline out not to stop there).
            stop_at_eos: stop a row after it emits EOS.
            ban_eos: never emit EOS (each row then runs to its budget or a stop id).
            use_cache: decode with the KV cache; ``False`` runs fairseq2's own forward over the
                whole sequences at every step (slow: the reference the cache is tested against).
            progress: show a tqdm bar over prompts.

        Returns:
            The generated ids of each prompt, in the order of ``prompts`` (prompt excluded).
        """
        n = len(prompts)
        if n == 0:
            return []
        outputs: list[list[int]] = [[] for _ in range(n)]
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="generate", unit="prompt")
        steps = self._decode(
            prompts, allowed=allowed, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_p=top_p, top_k=top_k, seed=seed, min_new_tokens=min_new_tokens, batch_size=batch_size,
            stop_ids=stop_ids, stop_at_eos=stop_at_eos, ban_eos=ban_eos, use_cache=use_cache,
        )
        previous: list[int] = []
        for active, tokens in steps:
            for i, tok in zip(active, tokens):
                outputs[i].append(tok)
            if bar is not None:  # rows that were active last step and are not now have ended
                now = set(active)
                bar.update(sum(1 for i in previous if i not in now) if now <= set(previous) or not previous
                           else len(previous))
                previous = active
        if bar is not None:
            bar.update(n - bar.n)
            bar.close()
        seconds = time.perf_counter() - t0
        new = sum(len(o) for o in outputs)
        self.last_stats = DecodeStats("generate", n, new, new + sum(len(p) for p in prompts), seconds)
        return outputs

    def generate_ids(self, prompt_ids: Sequence[int], **kwargs: Any) -> list[int]:
        """Continues one prompt (a batch of one of :meth:`generate_batch_ids`, whose keyword
        arguments it takes; ``do_sample`` defaults to ``True`` here); returns the generated ids."""
        kwargs.setdefault("do_sample", True)
        if not prompt_ids:
            raise ValueError("generate_ids: empty prompt")
        return self.generate_batch_ids([prompt_ids], **kwargs)[0]

    # -- inputs and outputs ----------------------------------------------------------------------

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
                self._check_units(parse_speech_string(content))  # "[Hu12][Hu7" is an error, not text
                return "speech", content  # a token string
            if self.speech_tokenizer is None:
                raise ValueError("an audio speech input needs a speech tokenizer (--speech_tokenizer)")
            if isinstance(content, Path):
                content = str(content)
            return "speech", self.speech_tokenizer.encode_string(content)
        raise ValueError(f"input modality must be 'text' or 'speech', got {modality!r}")

    def _check_units(self, tokens: Sequence[str]) -> None:
        """Refuses a speech prompt holding a unit the model's units (:attr:`num_units`) lack."""
        from .compat import check_prompt_units

        check_prompt_units(tokens, self.num_units, self.tokenizer)

    def prepare(
        self, interleaved_inputs: Sequence[InputItem] | str, output_modality: OutputModality
    ) -> tuple[list[tuple[str, str]], str, list[int]]:
        """Inputs → ``(rendered segments, prompt string, prompt ids)``."""
        if isinstance(interleaved_inputs, str):
            interleaved_inputs = [("text", interleaved_inputs)]
        if not interleaved_inputs:
            raise ValueError("generate: no inputs")
        rendered = [self._render_input(item) for item in interleaved_inputs]
        prompt = build_prompt(rendered, output_modality)
        return rendered, prompt, self.tokenizer.encode(prompt, bos=True, eos=False)

    @staticmethod
    def _lead(rendered: Sequence[tuple[str, str]], output_modality: str) -> str:
        """The modality a generation starts in: the requested one, or the prompt's last for arbitrary."""
        return rendered[-1][0] if output_modality == "arbitrary" else output_modality

    def outputs_of(self, ids: Sequence[int], lead: str) -> tuple[str, list[GenerationOutput]]:
        """Generated ids → ``(decoded string, segments)``: the one ids→text/speech path of
        :meth:`generate`, :meth:`generate_batch`, the server and the evaluations. Speech segments
        carry their token string and unit dict, and the vocoder's waveform when one is set."""
        string, segments = segments_of(self.tokenizer, ids, lead)
        outputs = []
        for seg in segments:
            if seg.modality == "text":
                outputs.append(GenerationOutput("text", seg.text))
            else:
                tokens, units = seg.render(), seg.units(fallback_style=self._fallback_style())
                content: Any = self._vocode(units) if self.vocoder is not None else tokens
                outputs.append(GenerationOutput("speech", content, tokens=tokens, units=units))
        return string, outputs

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

    # -- the public generation API -------------------------------------------------------------

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
        ban_eos: bool = False,
    ) -> list[GenerationOutput]:
        """Continues an interleaved prompt in the requested modality.

        Args:
            interleaved_inputs: ``[("text", str) | ("speech", path | waveform array | token
                string), …]``; a plain string is one text input.
            output_modality: ``"text"``, ``"speech"`` or ``"arbitrary"``.
            max_new_tokens: maximum number of generated tokens.
            temperature: softmax temperature (paper: 0.8).
            top_p: nucleus mass (paper: 0.95).
            top_k: keep the k best tokens (0: off; transformers' default is 50).
            do_sample: sample, or decode greedily.
            seed: sampling seed (reproducible generations).
            use_cache: incremental decoding with the KV cache.
            min_new_tokens: forbid EOS before this many tokens.
            ban_eos: never emit EOS (generate ``max_new_tokens`` tokens).

        Returns:
            The generated segments in order (see :class:`GenerationOutput`).
        """
        return self.generate_with_details(
            interleaved_inputs, output_modality=output_modality, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, do_sample=do_sample, seed=seed, use_cache=use_cache,
            min_new_tokens=min_new_tokens, ban_eos=ban_eos,
        )["outputs"]

    def generate_with_details(
        self, interleaved_inputs: Sequence[InputItem] | str, output_modality: OutputModality = "text", **kwargs: Any
    ) -> dict[str, Any]:
        """As :meth:`generate`; returns ``{"prompt", "prompt_ids", "ids", "string", "outputs"}``."""
        rendered, prompt, prompt_ids = self.prepare(interleaved_inputs, output_modality)
        ids = self.generate_ids(prompt_ids, allowed=self.allowed_tokens(output_modality), **kwargs)
        string, outputs = self.outputs_of(ids, self._lead(rendered, output_modality))
        return {"prompt": prompt, "prompt_ids": prompt_ids, "ids": ids, "string": string, "outputs": outputs}

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
        prepared = [self.prepare(items, m) for items, m in zip(inputs, modalities)]
        kwargs.setdefault("do_sample", True)
        ids_all = self.generate_batch_ids([p[2] for p in prepared], allowed=[self.allowed_tokens(m) for m in modalities],
                                          **kwargs)
        return [self.outputs_of(ids, self._lead(p[0], m))[1] for ids, p, m in zip(ids_all, prepared, modalities)]

    @torch.inference_mode()
    def stream(
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
        ban_eos: bool = False,
    ) -> Iterator[StreamPiece]:
        """:meth:`generate`, one :class:`StreamPiece` per token as it is decoded.

        Same arguments and the same decoder as :meth:`generate`: for the same seed the pieces'
        ``token_id`` are the ids ``generate_with_details(…)["ids"]`` returns (EOS included when
        emitted), their ``text`` joins to its text segments and their ``unit`` to its speech
        token strings. Speech comes as units; a streaming vocoder turns them into audio.
        """
        rendered, _, prompt_ids = self.prepare(interleaved_inputs, output_modality)
        pieces = PieceDecoder(self.tokenizer, self._lead(rendered, output_modality))
        t0, new = time.perf_counter(), 0
        steps = self._decode(
            [prompt_ids], allowed=self.allowed_tokens(output_modality), max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            min_new_tokens=min_new_tokens, batch_size=1, stop_ids=None, stop_at_eos=True, ban_eos=ban_eos,
            use_cache=use_cache,
        )
        budget = min(max_new_tokens, self.config.max_seq_len - len(prompt_ids))
        try:
            for _, tokens in steps:
                new += 1
                yield pieces(tokens[0], last=new >= budget)
        finally:
            seconds = time.perf_counter() - t0
            self.last_stats = DecodeStats("generate", 1, new, new + len(prompt_ids), seconds)

    # -- scoring -------------------------------------------------------------------------------

    @torch.inference_mode()
    def score_continuations(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[ContinuationScore]:
        """Log-probabilities of ``continuations[i]`` after ``prompts[i]`` (natural log).

        One path: the distinct prompts run ``batch_size`` at a time as left-padded prefills into
        the decoder's cache (a prompt shared by several continuations, as one prompt with many
        candidate labels, runs once); then the continuations of those prompts run
        ``batch_size`` at a time as right-padded blocks after their prompt's cached keys/values,
        and only the continuation positions go through the output projection (the full
        ``[B, L, V]`` logits of a 7B model would not fit). Equals scoring each pair alone with
        fairseq2's forward up to float rounding.

        Args:
            prompts: token-id lists, each non-empty (include BOS if the model was trained with it).
            continuations: token-id lists (an empty one scores 0).
            batch_size: sequences per forward pass.
            progress: show a tqdm bar.

        Returns:
            One :class:`ContinuationScore` per pair, in input order.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"score_continuations: {len(prompts)} prompts but {len(continuations)} continuations")
        max_len = self.config.max_seq_len
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            if not p:
                raise ValueError(f"score_continuations: prompt {i} is empty")
            if len(p) + len(c) > max_len:
                raise ValueError(f"score_continuations: pair {i} has {len(p) + len(c)} tokens > max_seq_len {max_len}")
        results: list[ContinuationScore] = [ContinuationScore(0.0, []) for _ in prompts]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            if c:
                groups.setdefault(tuple(p), []).append(i)
        unique = sorted(groups, key=lambda p: -len(p))
        device = self.device
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(prompts), desc="score", unit="seq")
        dec = LlamaDecoder(self.model)
        for u0 in range(0, len(unique), batch_size):
            chunk = unique[u0 : u0 + batch_size]
            ids, lens = pad_batch([list(p) for p in chunk], dtype=torch.long, side="left")
            lengths, W = lens.tolist(), ids.shape[1]
            first = dec.prefill(ids.to(device), lengths, W).float().log_softmax(-1)  # [U, V]: each first token
            k, v, valid = dec.k, dec.v, dec.key_valid
            pairs = sorted(((r, i) for r, p in enumerate(chunk) for i in groups[p]),
                           key=lambda x: -len(continuations[x[1]]))
            for c0 in range(0, len(pairs), batch_size):
                part = pairs[c0 : c0 + batch_size]
                self._score_block(dec, part, chunk, continuations, first, k, v, valid, W, results)
            if bar is not None:
                bar.update(sum(len(groups[p]) for p in chunk))
        if bar is not None:
            bar.update(len(prompts) - bar.n)
            bar.close()
        seconds = time.perf_counter() - t0
        tokens = sum(len(p) for p in unique) + sum(len(c) for c in continuations)
        self.last_stats = DecodeStats("score", len(prompts), 0, tokens, seconds)
        return results

    def _score_block(self, dec: LlamaDecoder, part: list[tuple[int, int]], chunk: list[tuple[int, ...]],
                     continuations: Sequence[Sequence[int]], first: Tensor, k: list[Tensor], v: list[Tensor],
                     valid: Tensor, W: int, results: list[ContinuationScore]) -> None:
        """Scores the continuations ``part`` (``(prompt row, pair index)``) after their cached prompts."""
        device = first.device
        conts = [list(continuations[i]) for _, i in part]
        block, _ = pad_batch(conts, dtype=torch.long)
        C, L = block.shape
        block = block.to(device)
        rows = torch.tensor([r for r, _ in part], device=device)
        plen = torch.tensor([len(chunk[r]) for r, _ in part], device=device)
        positions = plen.unsqueeze(1) + torch.arange(L, device=device).unsqueeze(0)
        # the prompts' cache rows, with room for the block after them
        dec.k = [torch.cat([x[rows], x.new_empty(C, x.size(1), L, x.size(3))], dim=2) for x in k]
        dec.v = [torch.cat([x[rows], x.new_empty(C, x.size(1), L, x.size(3))], dim=2) for x in v]
        dec.key_valid = torch.cat([valid[rows], torch.zeros(C, L, dtype=torch.bool, device=device)], dim=1)
        hidden = dec.extend(block, positions, W)  # [C, L, M]
        sel_b = [j for j, c in enumerate(conts) for _ in range(len(c) - 1)]
        sel_t = [t for c in conts for t in range(len(c) - 1)]
        targets = [c[t + 1] for c in conts for t in range(len(c) - 1)]
        rest: list[float] = []
        if sel_b:
            h = hidden[torch.tensor(sel_b, device=device), torch.tensor(sel_t, device=device)]
            logp = self.model.final_proj(h).float().log_softmax(-1)
            rest = logp.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).tolist()
        heads = first[rows, block[:, 0]].tolist()
        o = 0
        for j, (_, i) in enumerate(part):
            lps = [float(heads[j])] + [float(x) for x in rest[o : o + len(conts[j]) - 1]]
            o += len(conts[j]) - 1
            results[i] = ContinuationScore(sum_logprob=float(sum(lps)), token_logprobs=lps)

