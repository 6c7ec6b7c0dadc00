"""The embedded pipeline on the synthetic corpus, from audio to a report: what ``make demo`` runs.

``spiritlm demo --preset quick|full [--out demo_out] [--fresh true] [--only STAGE]`` (or
``python -m spiritlm.recipes.demo …``). Every stage is the ``spiritlm`` command a user would type,
printed before it runs, so the demo doubles as a walkthrough::

    corpus          corpus synth + check  -> OUT/corpus/{manifest.jsonl, wavs/, stats.json}
    text            corpus text           -> OUT/text.txt (text-only documents: the stand-in for LLaMA-2's text)
    tokenizer       tokenizer train       -> OUT/tokenizer (MFCC units + pitch VQ-VAE + style), metrics.json
    tokenize        tokenize              -> OUT/units.jsonl (Meta's units format)
    data            data build ×2         -> OUT/data/{train,valid} (speech / text / interleaved shards)
    lm-text         train                 -> OUT/lm/tiny-text          the stand-in for LLaMA-2
    lm-interleaved  train                 -> OUT/lm/tiny-interleaved   continued pretraining, as Spirit LM
    vocoder         vocoder train         -> OUT/vocoder (unit HiFi-GAN + duration predictor)
    resynthesis     vocoder eval + synth  -> OUT/vocoder_eval/metrics.json, OUT/resynth/wavs/<id>.wav
    generate        generate ×3           -> OUT/generate/{t2t,t2s,s2s}/ (T→T text, T→S and S→S WAVs)
    judges          eval judges           -> OUT/judges (CTC ASR + sentiment classifiers, their own scores)
    eval-asr, eval-tts, eval-ic, eval-stsp, eval-zeroshot
                    eval <task>           -> OUT/evals/<task>/{metrics.json, predictions.jsonl}
    report          (spiritlm demo --only report) -> OUT/report/report.md, PNGs, WAVs

A stage is complete when its marker ``OUT/.demo/<stage>.json`` (written after its commands
succeed) and its outputs exist; complete stages are skipped, so an interrupted demo resumes where
it stopped (inside a stage too where its command resumes: tokenize, LM and vocoder training). ``--only STAGE`` reruns one stage from the outputs of the stages before it (its own
outputs are deleted first); ``--fresh true`` starts over. A failing command stops the demo with
its error and the ``--only`` line that reruns the stage. ``OUT/demo_summary.json`` holds the
preset, the seconds of each stage and the headline numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jsonargparse.typing import NonNegativeInt

from spiritlm.atomic import atomic_file
from spiritlm.errors import UserError
from spiritlm.recipes.report import EVAL_TASKS, STSP_OURS, DemoLayout, build_report, serve_command

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Preset:
    """Sizes of every stage.

    Attributes:
        num_utts: utterances in the synthetic corpus.
        text_docs: documents in the text-only corpus.
        text_steps: steps of text-only LM pretraining.
        mixture_steps: steps of continued pretraining on the speech/text/interleaved mixture.
        warmup_steps: learning-rate warm-up of both LM stages.
        vocoder_steps: vocoder training steps.
        vocoder_gan_steps: the last steps of those that train with the discriminators (before
            them: mel + duration losses only, ~6x cheaper and where a CPU budget gains most;
            measured in vocoder/README.md).
        resynth_utts: test utterances resynthesized for the report.
        judge_asr_steps: training steps of the CTC ASR judge.
        eval_items: test items per evaluation (``--max_items``).
        asr_shots, ic_shots, tts_shots: in-context examples of the few-shot evals.
        gen_tokens: most tokens of the demo's generations.
    """

    num_utts: int
    text_docs: int
    text_steps: int
    mixture_steps: int
    warmup_steps: int
    vocoder_steps: int
    vocoder_gan_steps: int
    resynth_utts: int
    judge_asr_steps: int
    eval_items: int
    asr_shots: int
    ic_shots: int
    tts_shots: int
    gen_tokens: int


PRESETS: dict[str, Preset] = {
    # a smoke run of every stage (the end-to-end test); numbers mean nothing at this size
    "quick": Preset(num_utts=120, text_docs=2000, text_steps=10, mixture_steps=10, warmup_steps=3, vocoder_steps=20, vocoder_gan_steps=5, resynth_utts=2,
                    judge_asr_steps=5, eval_items=8, asr_shots=2, ic_shots=4, tts_shots=2, gen_tokens=30),
    # what `make demo` runs: ~45 minutes on 2 CPU cores
    "full": Preset(num_utts=1500, text_docs=20000, text_steps=300, mixture_steps=300, warmup_steps=30, vocoder_steps=800, vocoder_gan_steps=100, resynth_utts=4,
                   judge_asr_steps=800, eval_items=100, asr_shots=10, ic_shots=30, tts_shots=10, gen_tokens=120),
}


@dataclass
class Stage:
    """One step of the demo.

    Attributes:
        name: what ``--only`` takes.
        commands: ``spiritlm`` argument lists, run in order.
        outputs: files that exist when the stage is complete.
        owns: paths removed before a forced rerun (``--only``).
        needs: paths (other stages' outputs) that must exist before it runs.
        before: Python step run before the commands (prepares an input file).
        after: Python step run after the commands (gets the captured command output).
        make_commands: builds ``commands`` when the stage runs, for commands that depend on an
            earlier stage's outputs (a prompt taken from the corpus).
    """

    name: str
    commands: list[list[str]]
    outputs: list[Path]
    owns: list[Path]
    needs: list[Path] = field(default_factory=list)
    before: Callable[[], None] | None = None
    after: Callable[[list[str]], None] | None = None
    make_commands: Callable[[], list[list[str]]] | None = None


class DemoError(UserError):
    """A stage failed; the message names the stage, the command and how to rerun it."""


# ---------------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------------


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy (a command's printed result, e.g. generated text)."""

    def __init__(self, stream):
        self.stream, self.buffer_ = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.buffer_.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def run_command(argv: list[str]) -> str:
    """Runs ``spiritlm ARGV`` in this process (printed first); returns what it printed.

    Raises:
        SystemExit: with the command's non-zero status when it fails (it has printed its error).
    """
    from spiritlm.cli import main as spiritlm

    print(f"\n$ spiritlm {' '.join(argv)}", flush=True)
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            spiritlm(argv)
    except SystemExit as exc:  # jsonargparse and commands exit; only a failure stops the demo
        if exc.code not in (None, 0):
            raise
    finally:
        sys.stdout.flush()
    return tee.buffer_.getvalue()


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


def build_stages(out: Path, preset: Preset, seed: int, threads: int = 1) -> list[Stage]:
    """The demo's stages for folder ``out``, in order (``threads``: torch CPU threads of the commands that take them)."""
    L = DemoLayout(out)
    s = str(seed)
    manifest, units, tok = str(L.manifest), str(L.units), str(L.tokenizer)
    # --overwrite: the stage owns both folders; a rerun after a failure between the two builds redoes both
    common = ["--units", units, "--expressive", "true", "--group_words", "40", "--seed", s, "--overwrite", "true"]
    data_opts = ["--data.data_dir", str(L.data_train), "--data.val_dir", str(L.data_valid), "--optim.warmup_steps", str(preset.warmup_steps)]
    model = str(L.lm_mix)
    stages = [
        # --overwrite true: an incomplete stage (no marker) starts over, whatever an interrupted run left
        Stage("corpus", [["corpus", "synth", "--out", str(L.corpus), "--num_utts", str(preset.num_utts), "--seed", s, "--overwrite", "true"],
                         ["corpus", "check", manifest]],
              outputs=[L.manifest, L.corpus / "stats.json"], owns=[L.corpus]),
        Stage("text", [["corpus", "text", "--out", str(L.text), "--num_sentences", str(preset.text_docs), "--seed", s, "--overwrite", "true"]],
              outputs=[L.text], owns=[L.text]),
        Stage("tokenizer", [["tokenizer", "train", "--manifest", manifest, "--out", tok, "--preset", "tiny", "--seed", s]],
              outputs=[L.tokenizer / "metrics.json"], owns=[L.tokenizer], needs=[L.manifest]),
        Stage("tokenize", [["tokenize", "--manifest", manifest, "--speech_tokenizer", tok, "--out", units]],
              outputs=[L.units], owns=[L.units, Path(f"{L.units}.errors.json")], needs=[L.manifest, L.tokenizer / "metrics.json"]),
        Stage("data", [["data", "build", "--manifest", manifest, "--out", str(L.data_train), "--split", "train",
                        "--extra_text", str(L.text), *common],
                       ["data", "build", "--manifest", manifest, "--out", str(L.data_valid), "--split", "valid",
                        "--text_tokenizer", str(L.data_train / "tokenizer.model"), *common]],
              outputs=[L.data_train / "summary.json", L.data_valid / "summary.json"], owns=[L.root / "data"],
              needs=[L.manifest, L.units, L.text]),
        Stage("lm-text", [["train", "--config", str(CONFIGS / "tiny-text.yaml"), *data_opts,
                           "--train.output_dir", str(L.lm_text), "--train.max_steps", str(preset.text_steps)]],
              outputs=[L.lm_text / "metrics.json"], owns=[L.lm_text], needs=[L.data_valid / "summary.json"]),
        Stage("lm-interleaved", [["train", "--config", str(CONFIGS / "tiny-interleaved.yaml"), *data_opts,
                                  "--model.init_from", str(L.lm_text), "--train.output_dir", model,
                                  "--train.max_steps", str(preset.mixture_steps)]],
              outputs=[L.lm_mix / "metrics.json"], owns=[L.lm_mix], needs=[L.lm_text / "metrics.json"]),
        *vocoder_stages(L, preset, seed, threads),
        generate_stage(L, preset, seed),
        *eval_stages(L, preset, seed),
    ]
    return stages


def vocoder_stages(L: DemoLayout, preset: Preset, seed: int, threads: int) -> list[Stage]:
    """Vocoder training, then its resynthesis metrics and a few resynthesized test utterances."""
    # the CPU recipe recipes/configs/vocoder-tiny.yaml (mel + duration first, a narrow discriminator
    # at the end), scaled to this preset's steps
    train = Stage("vocoder", [["vocoder", "train", "--config", "vocoder-tiny", "--manifest", str(L.manifest), "--units", str(L.units),
                               "--speech_tokenizer", str(L.tokenizer), "--out", str(L.vocoder), "--max_steps", str(preset.vocoder_steps),
                               "--disc_start_step", str(preset.vocoder_steps - preset.vocoder_gan_steps),
                               "--val_every", str(preset.vocoder_steps), "--save_every", str(max(preset.vocoder_steps // 4, 1)),
                               "--seed", str(seed), "--threads", str(threads), "--resume", "true"]],
                  outputs=[L.vocoder / "config.json"], owns=[L.vocoder], needs=[L.manifest, L.units, L.tokenizer / "metrics.json"])

    def pick_test_units() -> None:
        write_test_units(L.manifest, L.units, L.resynth_units, preset.resynth_utts)

    resynth = Stage("resynthesis",
                    [["vocoder", "eval", "--vocoder", str(L.vocoder), "--manifest", str(L.manifest), "--units", str(L.units),
                      "--speech_tokenizer", str(L.tokenizer), "--out", str(L.vocoder_eval), "--max_utts", str(preset.eval_items),
                      "--control_pairs", str(min(preset.eval_items, 20)), "--threads", str(threads), "--overwrite", "true"],
                     ["vocoder", "synth", "--vocoder", str(L.vocoder), "--units", str(L.resynth_units), "--out", str(L.resynth),
                      "--overwrite", "true"]],
                    outputs=[L.vocoder_eval / "metrics.json", L.resynth], owns=[L.vocoder_eval, L.resynth_units.parent],
                    needs=[L.vocoder / "config.json", L.units], before=pick_test_units)
    return [train, resynth]


def generate_stage(L: DemoLayout, preset: Preset, seed: int) -> Stage:
    """T→T, T→S and S→S continuations of a test utterance by the interleaved LM, spoken by the vocoder."""
    gens: list[tuple[str, str, list[str], str]] = []  # (folder, direction, options, prompt as shown)

    def make_commands() -> list[list[str]]:
        # the prompt is the first test utterance: its first words (text) or its audio (speech)
        item = first_test_item(L.manifest)
        if item is None:
            raise UserError(f"{L.manifest}: no test-split utterance to prompt the LM with (--out: rerun the corpus stage)")
        prompt_text = " ".join(item.text.split()[:4])
        gens[:] = [
            ("t2t", "T→T", ["--text", prompt_text, "--output_modality", "text"], prompt_text),
            ("t2s", "T→S", ["--text", prompt_text, "--output_modality", "speech"], prompt_text),
            ("s2s", "S→S", ["--speech", item.audio, "--speech_tokenizer", str(L.tokenizer), "--output_modality", "speech"],
             f"audio of `{item.id}`: “{item.text}”"),
        ]
        return [["generate", "--model", str(L.lm_mix), *opts, "--vocoder", str(L.vocoder), "--output_dir", str(L.generate / name),
                 "--max_new_tokens", str(preset.gen_tokens), "--min_new_tokens", "10", "--seed", str(seed),
                 "--overwrite", "true"]  # an unfinished stage is redone: a killed run may have written t2s/ already
                for name, _, opts, _ in gens]

    def record(printed: list[str]) -> None:
        # what the report shows next to each output: the prompt, and for T→T the text printed
        entries = []
        for (name, direction, opts, prompt), text in zip(gens, printed):
            lines = [ln[len("[text] "):] for ln in text.splitlines() if ln.startswith("[text] ")]
            entries.append({"name": name, "direction": direction, "prompt": prompt, "output_text": " ".join(lines) or None,
                            "prompt_audio": opts[1] if opts[0] == "--speech" else None})
        _write_json(L.generate / "prompts.json", entries)

    return Stage("generate", [], outputs=[L.generate / "prompts.json"], owns=[L.generate],
                 needs=[L.lm_mix / "metrics.json", L.vocoder / "config.json", L.manifest], after=record, make_commands=make_commands)


def eval_stages(L: DemoLayout, preset: Preset, seed: int) -> list[Stage]:
    """The judges, then every evaluation of the interleaved LM on the corpus's test split.

    (They run in the demo's process and use its torch thread count.)
    """
    judges = Stage("judges", [["eval", "judges", "--manifest", str(L.manifest), "--out", str(L.judges), "--preset", "tiny",
                               "--asr_steps", str(preset.judge_asr_steps), "--seed", str(seed)]],
                   outputs=[L.judges / "judges_metrics.json"], owns=[L.judges], needs=[L.manifest])
    shots = {"asr": preset.asr_shots, "ic": preset.ic_shots, "tts": preset.tts_shots}
    stages = [judges]
    for task in EVAL_TASKS:
        argv = ["eval", task, "--model", str(L.lm_mix), "--manifest", str(L.manifest), "--units", str(L.units),
                "--out", str(L.eval_dir(task)), "--max_items", str(preset.eval_items), "--seed", str(seed), "--overwrite", "true"]
        needs = [L.lm_mix / "metrics.json"]
        if task in shots:
            argv += ["--shots", str(shots[task])]
        if task in ("tts", "stsp"):  # speech outputs are spoken by the vocoder and judged
            argv += ["--vocoder", str(L.vocoder), "--judges", str(L.judges)]
            needs += [L.vocoder / "config.json", L.judges / "judges_metrics.json"]
        if task == "zeroshot":  # spoken pseudo-words are tokenized with the demo's tokenizer
            argv += ["--speech_tokenizer", str(L.tokenizer)]
        if task == "stsp":  # both protocols, side by side in the report: Meta's (the default) and ours
            ours = [*argv[: argv.index("--out") + 1], str(L.eval_dir(STSP_OURS)), *argv[argv.index("--out") + 2:], "--protocol", "ours"]
            stages.append(Stage("eval-stsp", [[*argv, "--protocol", "meta"], ours],
                                outputs=[L.eval_dir(task) / "metrics.json", L.eval_dir(STSP_OURS) / "metrics.json"],
                                owns=[L.eval_dir(task), L.eval_dir(STSP_OURS)], needs=needs))
            continue
        stages.append(Stage(f"eval-{task}", [argv], outputs=[L.eval_dir(task) / "metrics.json"], owns=[L.eval_dir(task)], needs=needs))
    return stages


# ---------------------------------------------------------------------------------------------
# Small file helpers
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=1) + "\n")


def first_test_item(manifest: Path):
    """The manifest's first test-split utterance (``spiritlm.corpus.manifest.Utterance``, audio absolute), or None."""
    from spiritlm.corpus.manifest import read_manifest

    return next((u for u in read_manifest(manifest, required=("id", "audio", "text")) if u.split == "test"), None)


def write_test_units(manifest: Path, units: Path, out: Path, n: int) -> int:
    """Copies the units lines of the manifest's first ``n`` test utterances to ``out``; returns how many."""
    from spiritlm.corpus.manifest import read_manifest
    from spiritlm.units_jsonl import iter_unit_lines

    test_ids = [u.id for u in read_manifest(manifest, required=("id", "audio")) if u.split == "test"]
    rows = {line.id: json.dumps(line.record) for line in iter_unit_lines(units) if line.error is None and line.id is not None}
    picked = [rows[i] for i in test_ids if i in rows][:n]
    if not picked:
        raise UserError(f"{units}: no units for the test utterances of {manifest} (--out: rerun the tokenize stage)")
    print(f"[demo] resynthesis: {len(picked)} test utterances of {units} -> {out}")
    with atomic_file(out) as f:
        f.write("\n".join(picked) + "\n")
    return len(picked)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _marker(out: Path, name: str) -> Path:
    return out / ".demo" / f"{name}.json"


def is_complete(out: Path, stage: Stage) -> bool:
    """The stage's marker and every output exist."""
    return _marker(out, stage.name).is_file() and all(p.exists() for p in stage.outputs)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children.

    Workers started through a forkserver (``corpus synth``, ``data build``) are the forkserver's
    children, not ours: their time is not counted, so those stages show less CPU than they used.
    """
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_stage(out: Path, stage: Stage, rerun_hint: str) -> float:
    """Runs one stage (its inputs must exist); writes its marker; returns its seconds.

    The marker keeps wall and CPU seconds: on a shared machine the wall time depends on the
    load, the CPU time much less (a stage on an idle 2-core machine takes between CPU/2 and CPU).
    """
    missing = [p for p in stage.needs if not p.exists()]
    if missing:
        raise DemoError(f"{missing[0]}: missing, needed by stage {stage.name!r} (--only: run the stages before it first)")
    _remove(_marker(out, stage.name))
    print(f"\n[demo] ==== {stage.name} ====", flush=True)
    t0, c0 = time.time(), _cpu_seconds()
    if stage.before is not None:
        stage.before()
    if stage.make_commands is not None:
        stage.commands = stage.make_commands()
    printed = []
    for argv in stage.commands:
        try:
            printed.append(run_command(argv))
        except SystemExit as exc:
            raise DemoError(f"stage {stage.name!r} failed: `spiritlm {' '.join(argv[:2])} …` exited with status {exc.code} "
                            f"(its error is above; rerun the stage with `{rerun_hint} --only {stage.name}`)") from None
    if stage.after is not None:
        stage.after(printed)
    absent = [p for p in stage.outputs if not p.exists()]
    if absent:
        raise DemoError(f"{absent[0]}: stage {stage.name!r} ran but did not write it")
    seconds = round(time.time() - t0, 1)
    _write_json(_marker(out, stage.name), {"seconds": seconds, "cpu_seconds": round(_cpu_seconds() - c0, 1), "commands": stage.commands,
                                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return seconds


def _check_preset(out: Path, preset_name: str, seed: int) -> None:
    """OUT keeps the preset and seed it was made with; another one would mix sizes."""
    path = out / ".demo" / "config.json"
    current = {"preset": preset_name, "seed": seed}
    if path.is_file():
        made = json.loads(path.read_text())
        if made != current:
            raise UserError(f"{out}: made with --preset {made.get('preset')} --seed {made.get('seed')}, not --preset {preset_name} "
                            f"--seed {seed} (--fresh true starts over; or choose another --out)")


def _record_preset(out: Path, preset_name: str, seed: int) -> None:
    """Writes ``.demo/config.json`` once a stage made something (a failed first stage leaves OUT free for any preset)."""
    path = out / ".demo" / "config.json"
    if not path.is_file():
        _write_json(path, {"preset": preset_name, "seed": seed})


def run_demo(out: Path, preset_name: str = "full", seed: int = 0, only: str | None = None, threads: int = 1) -> dict:
    """Runs the demo's stages into ``out`` (or only one of them); writes the report and ``demo_summary.json``.

    Returns the summary.
    """
    from spiritlm.numerics import threads as pinned_threads

    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r} (--preset: choose from {', '.join(PRESETS)})")
    preset = PRESETS[preset_name]
    threads = threads or _cpus()  # 0: one per core
    stages = build_stages(out, preset, seed, threads)
    names = [s.name for s in stages] + ["report"]
    if only is not None and only not in names:
        raise UserError(f"unknown stage {only!r} (--only: choose from {', '.join(names)})")
    out.mkdir(parents=True, exist_ok=True)
    _check_preset(out, preset_name, seed)
    rerun_hint = f"spiritlm demo --preset {preset_name} --out {out}"

    t0 = time.time()
    for stage in stages:
        if only is not None and stage.name != only:
            continue
        if only is None and is_complete(out, stage):
            print(f"\n[demo] {stage.name}: already done, skipping")
            continue
        if only is not None:  # a rerun starts from the stages before it, not from its own leftovers
            for path in stage.owns:
                _remove(path)
        # each stage starts from the demo's thread count in every pool, whatever the last command left
        with pinned_threads(threads):
            run_stage(out, stage, rerun_hint)
            _record_preset(out, preset_name, seed)
    summary = write_summary(out, preset_name, stages, time.time() - t0)
    print(f"\n$ spiritlm demo --out {out} --only report")
    report = build_report(out)
    print(f"[demo] report: {report}")
    return summary


def write_summary(out: Path, preset_name: str, stages: list[Stage], seconds: float) -> dict:
    """``OUT/demo_summary.json``: preset, seconds per stage (from the markers, so resumed runs add up) and headline numbers."""
    L = DemoLayout(out)
    stage_seconds, stage_cpu = {}, {}
    for stage in stages:
        marker = _marker(out, stage.name)
        if marker.is_file():
            rec = json.loads(marker.read_text())
            stage_seconds[stage.name] = rec["seconds"]
            stage_cpu[stage.name] = rec.get("cpu_seconds")

    def load(path: Path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    summary = {
        "out": str(out),
        "preset": preset_name,
        "preset_sizes": asdict(PRESETS[preset_name]),
        "seconds": round(sum(stage_seconds.values()), 1),
        "this_run_seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
        "stage_cpu_seconds": stage_cpu,
        "incomplete_stages": [s.name for s in stages if not is_complete(out, s)],
        "corpus": load(L.corpus / "stats.json"),
        "tokenizer_metrics": load(L.tokenizer / "metrics.json"),
        "data": {name: load(d / "summary.json") for name, d in (("train", L.data_train), ("valid", L.data_valid))},
        "lm": {name: load(d / "metrics.json") for name, d in (("text", L.lm_text), ("interleaved", L.lm_mix))},
        "vocoder": load(L.vocoder_eval / "metrics.json"),
        "judges": load(L.judges / "judges_metrics.json"),
        "evals": {task: load(L.eval_dir(task) / "metrics.json") for task in EVAL_TASKS},
    }
    _write_json(L.summary, summary)
    return summary


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def demo(preset: str = "full", out: str = "demo_out", fresh: bool = False, only: str | None = None,
         seed: int = 0, threads: NonNegativeInt = 1) -> None:
    """Run the whole pipeline on the synthetic corpus and write a report (what ``make demo`` runs).

    Stages: corpus, text, tokenizer, tokenize, data, lm-text, lm-interleaved, vocoder,
    resynthesis, generate, judges, eval-asr, eval-tts, eval-ic, eval-stsp, eval-zeroshot, report.
    Each prints the ``spiritlm`` command it runs; complete stages are skipped.

    Example: ``spiritlm demo --preset quick --out /tmp/demo`` (a few minutes), then
    ``spiritlm demo --preset quick --out /tmp/demo --only report`` to rebuild the report alone.

    Args:
        preset: ``quick`` (every stage at toy size, a few minutes) or ``full`` (about 45 minutes
            on 2 CPU cores).
        out: output folder; ``OUT/report/report.md`` is the report.
        fresh: delete ``OUT`` first and start over.
        only: run only this stage, again, from the outputs of the stages before it
            (``report`` rebuilds the report alone).
        seed: seed of every stage.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are) in every
            stage. The README's figures are measured at the default, 1: another count changes
            the last bits of training, and so the metrics (see spiritlm/numerics.py).
    """
    path = Path(out)
    if fresh and only is not None:
        raise UserError("--fresh true deletes every stage's outputs, so --only cannot run one stage from them")
    if fresh and path.exists():
        print(f"[demo] --fresh: deleting {path}")
        shutil.rmtree(path)
    if only == "report":
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r} (--preset: choose from {', '.join(PRESETS)})")
        if not path.is_dir():
            raise UserError(f"{path}: no such demo folder (--out)")
        print(f"[demo] report: {build_report(path)}")
        print(f"[demo] talk to the model: {serve_command(DemoLayout(path))}  (then open http://127.0.0.1:8000/)")
        return
    summary = run_demo(path, preset, seed, only, threads)
    print(f"\n[demo] done: {summary['seconds']} s of stages ({summary['this_run_seconds']} s this run); "
          f"summary in {path / 'demo_summary.json'}, report in {path / 'report' / 'report.md'}")
    print(f"[demo] talk to the model: {serve_command(DemoLayout(path))}  (then open http://127.0.0.1:8000/)")
    if summary["incomplete_stages"] and only is None:
        raise DemoError(f"{path}: stages not complete: {', '.join(summary['incomplete_stages'])}")


COMMANDS = demo


def main(argv: list[str] | None = None) -> None:
    """``python -m spiritlm.recipes.demo …`` = ``spiritlm demo …``."""
    from spiritlm.cli import main as spiritlm

    spiritlm(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
