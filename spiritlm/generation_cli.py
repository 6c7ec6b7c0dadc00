"""``spiritlm generate``: continue a text and/or speech prompt with a trained Spirit LM."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from spiritlm.cli import TopP
from spiritlm.constants import SAMPLE_RATE


def generate_fn(
    model: str,
    text: str | None = None,
    speech: str | None = None,
    speech_first: bool = False,
    output_modality: Literal["text", "speech", "arbitrary"] = "text",
    max_new_tokens: PositiveInt = 200,
    min_new_tokens: NonNegativeInt = 0,
    ban_eos: bool = False,
    do_sample: bool = True,
    temperature: NonNegativeFloat = 0.8,
    top_p: TopP = 0.95,
    top_k: NonNegativeInt = 0,
    seed: int | None = 0,
    use_cache: bool = True,
    speech_tokenizer: str | None = None,
    vocoder: str | None = None,
    speaker: str | None = None,
    output_dir: str = ".",
    out: str | None = None,
    device: str = "cpu",
    show_ids: bool = False,
    overwrite: bool = False,
) -> None:
    """Generate a continuation of a text and/or speech prompt and print it.

    Text segments are printed as text; speech segments as their token string
    (``[Hu12][Hu7]…``), or, with a vocoder, as the path of the WAV file written for them.

    Args:
        model: a Hugging Face LLaMA directory with ``tokenizer.model`` (e.g. Meta's
            spirit-lm-base-7b, or a run's ``hf/``), a ``spiritlm train`` run directory, or a
            checkpoint directory.
        text: text prompt.
        speech: speech prompt: a WAV file (needs ``speech_tokenizer``) or a token string
            such as ``"[Hu12][Hu7]"``.
        speech_first: with both prompts, put the speech before the text (default: text first).
        output_modality: ``text``, ``speech`` or ``arbitrary``.
        max_new_tokens: maximum number of generated tokens.
        min_new_tokens: forbid EOS before this many generated tokens.
        ban_eos: never emit EOS: generate exactly ``max_new_tokens`` tokens.
        do_sample: sample (true) or decode greedily (false).
        temperature: sampling temperature (paper: 0.8).
        top_p: nucleus sampling mass (paper: 0.95).
        top_k: keep only the k most likely tokens (0: off; transformers' default is 50).
        seed: sampling seed.
        use_cache: incremental decoding with the KV cache.
        speech_tokenizer: directory of a saved speech tokenizer (``spiritlm tokenizer``), used to
            turn a WAV prompt into units.
        vocoder: directory of a unit vocoder; speech outputs are then written as WAV files.
        speaker: the vocoder's speaker: a row index or a name from its speakers.txt (default: 0).
        output_dir: where WAV files go (``generation_NN.wav``) when ``out`` is not given.
        out: WAV path of the (first) speech output, with ``vocoder``; further speech segments
            of an ``arbitrary`` generation go next to it as ``<stem>_<N>.wav``.
        device: ``cpu`` or ``cuda[:N]``.
        show_ids: also print the prompt and generated token ids.
        overwrite: replace the WAV files of an earlier run (``out`` and its ``<stem>_<N>.wav``, or
            ``output_dir``'s ``generation_NN.wav``); without it such files make the command stop
            before loading anything.
    """
    _check_args(model, text, speech, output_modality, speech_tokenizer, vocoder)  # a typo costs a second, not the imports
    _check_vocoder_flags(vocoder, speaker, out)
    earlier = _earlier_wavs(out, output_dir, overwrite) if vocoder is not None else []
    _check_sampling(max_new_tokens, min_new_tokens, do_sample, temperature)

    lm, voc = _load(model, speech_tokenizer, vocoder, speaker, device)
    inputs = _prompt(lm, model, text, speech, speech_first, output_modality)
    result = lm.generate_with_details(
        inputs, output_modality=output_modality,  # type: ignore[arg-type]
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, ban_eos=ban_eos, do_sample=do_sample,
        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, use_cache=use_cache)
    _report(result, voc, output_modality, out, output_dir, show_ids, earlier)


def _check_vocoder_flags(vocoder: str | None, speaker: str | None, out: str | None) -> None:
    """``--speaker`` and ``--out`` only mean something with ``--vocoder``; a one-line UserError."""
    if vocoder is None:
        from spiritlm.errors import UserError

        for flag, value in (("--speaker", speaker), ("--out", out)):
            if value is not None:
                raise UserError(f"{flag} is for the vocoder's speech output: give --vocoder DIR too")


def _load(model: str, speech_tokenizer: str | None, vocoder: str | None, speaker: str | None, device: str):
    """The ``(SpiritLM, Vocoder or None)`` of the flags; an unknown ``--speaker`` or units the LM
    lacks stop here in one line, before the LM (or after the vocoder) loads."""
    import torch

    from spiritlm.generation import SpiritLM

    stok = None
    if speech_tokenizer is not None:
        from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer

        stok = SpeechTokenizer.load(speech_tokenizer, device=device)
    voc = None
    if vocoder is not None:
        from spiritlm.vocoder import Vocoder

        voc = Vocoder.from_pretrained(vocoder, device=device)
        if speaker is not None:  # an unknown name or a row beyond the table: one line before the LM loads
            speaker_arg = int(speaker) if speaker.strip().isdigit() else speaker
            voc._index(speaker_arg, voc.speakers, voc.config.num_speakers, "speaker")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # refuses a speech tokenizer or vocoder made for other units (UserError naming the flags)
    lm = SpiritLM.from_pretrained(model, speech_tokenizer=stok, vocoder=voc, device=device, dtype=dtype,
                                  speaker=None if speaker is None else (int(speaker) if speaker.strip().isdigit() else speaker))
    return lm, voc


def _prompt(lm, model: str, text: str | None, speech: str | None, speech_first: bool, output_modality: str) -> list:
    """The ``(modality, content)`` prompt list of ``--text``/``--speech`` in flag order; a token the
    model lacks is a one-line UserError naming the flags."""
    from spiritlm.errors import UserError
    from spiritlm.generation import build_prompt

    inputs = []
    if text is not None:
        inputs.append(("text", text))
    if speech is not None:
        inputs.insert(0 if speech_first else len(inputs), ("speech", speech))
    typed = [(m, c if m == "text" or c.lstrip().startswith("[") else "") for m, c in inputs]  # not audio paths
    try:
        lm.tokenizer.encode(build_prompt(typed, output_modality))  # a token the model lacks, named by its flag
    except KeyError as e:
        raise UserError(f"{e.args[0]} of {model} (--text / --speech)") from None
    return inputs


def _report(result: dict, voc, output_modality: str, out: str | None, output_dir: str, show_ids: bool,
            earlier: list[Path]) -> None:
    """Prints the generation (text, unit strings, or the WAV paths written with a vocoder) and
    removes the ``earlier`` run's WAVs this one did not replace."""
    if show_ids:
        print(f"prompt: {result['prompt']}")
        print(f"prompt ids: {result['prompt_ids']}")
        print(f"generated ids: {result['ids']}")
    out_dir = Path(output_dir)
    if not result["outputs"]:
        print(f"[{output_modality}] (nothing: the model ended the sequence at once; try --min_new_tokens)")
    n_speech = 0
    written: list[Path] = []
    for i, seg in enumerate(result["outputs"]):
        if seg.modality == "text" or voc is None:
            print(f"[{seg.modality}] {seg.content if seg.modality == 'text' else seg.tokens}")
            continue
        import numpy as np

        from spiritlm.audio import write_audio

        if out is not None:
            first = Path(out)
            path = first if n_speech == 0 else first.with_name(f"{first.stem}_{n_speech}{first.suffix or '.wav'}")
        else:
            path = out_dir / f"generation_{i:02d}.wav"
        n_speech += 1
        wav = seg.content
        if hasattr(wav, "detach"):
            wav = wav.detach().float().cpu().numpy()
        from spiritlm.atomic import atomic_path

        with atomic_path(path, suffix=".wav") as tmp:
            write_audio(tmp, np.asarray(wav, dtype=np.float32).reshape(-1), int(getattr(voc, "sample_rate", SAMPLE_RATE)), format="WAV")
        written.append(path)
        print(f"[speech] {path}")
    for old in earlier:  # --overwrite true: the earlier run's files this one did not replace go too
        if old not in written:
            old.unlink(missing_ok=True)


def _earlier_wavs(out: str | None, output_dir: str, overwrite: bool) -> list[Path]:
    """The WAV files an earlier ``generate`` left where this one writes (``--out`` and its
    ``<stem>_<N>.wav``, or ``--output_dir``'s ``generation_NN.wav``).

    The output rule of every command (:mod:`spiritlm.atomic`): they are refused unless
    ``overwrite``, in one line naming them, before any model loads.

    Raises:
        UserError: earlier files without ``overwrite``; ``--out`` a folder or under a file.
    """
    import re

    from spiritlm.atomic import check_output
    from spiritlm.errors import UserError

    if out is not None:
        first = Path(out)
        check_output(first, True)  # a folder, or a parent that is a file: one line naming it (--out)
        pattern = re.compile(re.escape(first.stem) + r"_\d+" + re.escape(first.suffix or ".wav"))
        found = [first] if first.is_file() else []
        folder, flag = first.parent, "--out"
    else:
        folder, flag = Path(output_dir), "--output_dir"
        check_output(folder, True, done=("generation_00.wav",), out_flag=flag)  # a file where the folder goes
        pattern, found = re.compile(r"generation_\d+\.wav"), []
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    if found and not overwrite:
        where = out if out is not None else output_dir
        raise UserError(f"{where}: already holds the WAVs of an earlier run ({', '.join(p.name for p in found[:3])}"
                        f"{', ...' if len(found) > 3 else ''}); pass --overwrite true to replace them ({flag})")
    return found


def _check_sampling(max_new_tokens, min_new_tokens, do_sample, temperature) -> None:
    """What the flags' types cannot say: how two flags relate."""
    from spiritlm.errors import UserError

    if min_new_tokens > max_new_tokens:
        raise UserError(f"--min_new_tokens {min_new_tokens}: must be in 0..--max_new_tokens ({max_new_tokens})")
    if do_sample and not temperature > 0:
        raise UserError(f"--temperature {temperature}: must be > 0 when sampling (or --do_sample false)")


def check_model_paths(model: str, speech_tokenizer: str | None, vocoder: str | None) -> None:
    """The model, speech tokenizer and vocoder directories exist (``--model``, ``--speech_tokenizer``,
    ``--vocoder`` of ``spiritlm generate`` and ``spiritlm serve``); a one-line UserError otherwise."""
    import os

    from spiritlm.errors import UserError

    if not os.path.isdir(model):
        raise UserError(f"{model}: no such model directory (--model)")
    if speech_tokenizer is not None and not os.path.isfile(os.path.join(speech_tokenizer, "config.json")):
        raise UserError(f"{speech_tokenizer}: not a speech tokenizer directory, no config.json (--speech_tokenizer)")
    if vocoder is not None and not os.path.exists(vocoder):
        raise UserError(f"{vocoder}: no such vocoder (--vocoder)")


def _check_args(model, text, speech, output_modality, speech_tokenizer, vocoder) -> None:
    """Checks flags and paths before torch and fairseq2 are imported; raises a one-line UserError."""
    import os

    from spiritlm.errors import UserError
    from spiritlm.formats import UnitFormatError, parse_speech_string

    if text is None and speech is None:
        raise UserError("give --text and/or --speech")
    check_model_paths(model, speech_tokenizer, vocoder)
    if speech is not None:
        if speech.lstrip().startswith("["):
            try:
                parse_speech_string(speech)
            except UnitFormatError as e:
                raise UserError(f"--speech: {e}") from None
        elif not os.path.isfile(speech):
            raise UserError(f"{speech}: no such audio file, and not a token string such as [Hu12][Hu7] (--speech)")
        elif speech_tokenizer is None:
            raise UserError(f"{speech}: an audio prompt needs --speech_tokenizer DIR to turn it into units (--speech)")


COMMANDS = generate_fn
