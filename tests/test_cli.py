"""The `spiritlm` command: every group and subcommand has a --help that documents every argument."""

import inspect
import subprocess
import sys

import docstring_parser
import pytest

from spiritlm import cli


def _commands():
    for group in cli.COMMAND_GROUPS:
        commands = cli.load_commands(group)
        if callable(commands):
            yield group, None, commands
        else:
            for name, fn in commands.items():
                yield group, name, fn


ALL = list(_commands())


def test_top_level_help_lists_groups(capsys):
    cli.main([])
    out = capsys.readouterr().out
    for group in cli.COMMAND_GROUPS:
        assert group in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("group, name, fn", ALL, ids=[f"{g} {n or ''}".strip() for g, n, _ in ALL])
def test_every_argument_is_documented(group, name, fn):
    doc = docstring_parser.parse(fn.__doc__ or "")
    assert doc.short_description, f"spiritlm {group} {name or ''}: no description"
    documented = {p.arg_name for p in doc.params}
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.name not in documented]
    assert not missing, f"spiritlm {group} {name or ''}: undocumented arguments {missing}"


@pytest.mark.parametrize("group, name, fn", ALL, ids=[f"{g} {n or ''}".strip() for g, n, _ in ALL])
def test_help_runs(group, name, fn, capsys):
    argv = [group] + ([name] if name else []) + ["--help"]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for p in inspect.signature(fn).parameters:
        assert p in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "spiritlm.cli", "formats", "split", "[Text]hi[Speech][Hu1][Hu2]"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["text: hi", "speech: [Hu1][Hu2]"]


# -- one meaning per flag name -------------------------------------------------------------------

# Flags whose default may differ between commands, and why (their type must still agree).
DEFAULT_DIFFERS = {
    "batch_size": "what is batched and what fits differs: utterances per forward pass (align, tokenize, evals); "
                  "None: the command's own (vocoder train: the preset's, vocoder synth: the vocoder's)",
    "max_new_tokens": "each task's answer length: a chat turn (generate, serve), a transcript (eval asr), speech (eval tts)",
    "shots": "each task's protocol (Meta's few-shot counts: asr/tts 10, ic 30, stsp 0)",
    "max_seconds": "align refuses utterances longer than this (120 s); segment cuts recordings into pieces of at most this (30 s)",
    "do_sample": "generate samples (the paper's setting); eval tts decodes greedily (reproducible metrics)",
    "preset": "each command's own presets (tokenizer train: tiny/base/expressive; demo: full/smoke; vocoder train: tiny/base/expressive)",
    "threads": "1 where the work is many small tensors (tokenize, the tokenizer and vocoder trainers, the demo: measured "
               "fastest on small shared CPUs, and runs repeat across machines); 0 (leave the pools as they are) for "
               "inference, whose big matrix products use every core",
}
# Flags with one name and two types (and so their own defaults), and why.
TYPE_DIFFERS = {
    "dtype": "checkpoint export: the stored dtype (float16 allowed); vocoder train: the compute dtype (auto = bf16 autocast on GPUs)",
}


def _flag_table():
    """flag name -> [(command, type without None, default)] over every command but `spiritlm train`,
    whose options are its recipe's sections (--model.preset, --optim.lr, …), not flags of these names."""
    import typing
    from collections import defaultdict

    table = defaultdict(list)
    for group, name, fn in ALL:
        if getattr(fn, "cli_argv", False):
            continue
        hints = typing.get_type_hints(fn)
        for p in inspect.signature(fn).parameters.values():
            hint = hints.get(p.name, p.annotation)
            args = typing.get_args(hint)
            if type(None) in args:  # X | None: the type is X
                rest = [a for a in args if a is not type(None)]
                hint = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
            default = None if p.default is p.empty else p.default
            table[p.name].append((f"{group} {name or ''}".strip(), hint, default))
    return table


def test_a_flag_name_has_one_type_and_one_default_across_commands():
    """Issue 19: `--threads 0` meant "torch's default" here and was refused there, `--tokenizer` was a
    speech tokenizer in one command and a sentencepiece model in another. A flag name now has one
    type (ranges included: PositiveInt is not int) and one default wherever it appears, except the
    commented entries above; a default of None ("not given") agrees with any."""
    bad = []
    for flag, uses in sorted(_flag_table().items()):
        if len(uses) < 2:
            continue
        types = {repr(t) for _, t, _ in uses}
        if len(types) > 1 and flag not in TYPE_DIFFERS:
            bad.append(f"--{flag} types: " + ", ".join(f"{c}: {t!r}" for c, t, _ in uses))
        defaults = {repr(d) for _, _, d in uses if d is not None}
        if len(defaults) > 1 and flag not in DEFAULT_DIFFERS and flag not in TYPE_DIFFERS:
            bad.append(f"--{flag} defaults: " + ", ".join(f"{c}: {d!r}" for c, _, d in uses))
    assert not bad, "\n".join(bad)


# Numeric flags without a range, and why.
UNBOUNDED = {"seed": "any integer is a seed"}


def test_numeric_flags_declare_their_range_in_their_type():
    """Issue 19: 39 hand-written checks (`if x < 1: raise UserError(...)`) guarded numbers typed `int`.
    A number's range is its type now (PositiveInt, NonNegativeInt, ClosedUnitInterval, …), which the
    parser checks and --help shows."""
    bare = [f"spiritlm {c} --{flag}: {t.__name__}" for flag, uses in sorted(_flag_table().items()) if flag not in UNBOUNDED
            for c, t, _ in uses if t in (int, float)]
    assert not bare, bare


def test_flag_names_say_which_tokenizer_and_config_is_a_file_of_options():
    """`--tokenizer` was a speech tokenizer folder in `tokenize` and `vocoder train`, a sentencepiece
    model in `checkpoint export` and `data inspect`; `--config` a preset name in `vocoder train` and
    a YAML file in `train`. Now: --speech_tokenizer / --text_tokenizer, and --config is, in every
    command, a YAML file of the command's options (spiritlm.cli adds it; --preset names presets)."""
    table = _flag_table()
    assert "tokenizer" not in table, f"{[c for c, _, _ in table['tokenizer']]}: say --speech_tokenizer or --text_tokenizer"
    for group, name, fn in ALL:  # a command's own --config is its recipe: a YAML file, never a preset's name
        if "config" in inspect.signature(fn).parameters and not getattr(fn, "cli_argv", False):
            doc = {p.arg_name: p.description for p in docstring_parser.parse(fn.__doc__ or "").params}["config"]
            assert "YAML" in doc, f"spiritlm {group} {name}: --config must be a YAML file (name presets --preset): {doc!r}"


def test_the_allow_lists_name_flags_that_still_differ():
    """An entry above whose flag no longer differs is stale: remove it."""
    table = _flag_table()
    stale = [f for f in DEFAULT_DIFFERS if len({repr(d) for _, _, d in table.get(f, []) if d is not None}) < 2]
    stale += [f for f in TYPE_DIFFERS if len({repr(t) for _, t, _ in table.get(f, [])}) < 2]
    assert not stale, stale


# -- a command's defaults are its API's ------------------------------------------------------------

# command -> (the API it forwards to, {flag: the API's name for it}); dataclass APIs: their fields
API_OF = {
    "generate": ("spiritlm.generation.lm:SpiritLM.generate", {}),
    "vocoder train": ("spiritlm.vocoder.train:TrainConfig", {}),
    "vocoder train ": ("spiritlm.vocoder.train:train_vocoder", {"speech_tokenizer": "tokenizer"}),
    "vocoder eval": ("spiritlm.vocoder.evaluate:evaluate_vocoder", {"speech_tokenizer": "tokenizer"}),
    "vocoder synth": ("spiritlm.vocoder.api:Vocoder.synthesize", {}),
    "tokenize": ("spiritlm.tokenizers.tokenize_cli:tokenize_manifest", {}),
    "tokenizer train": ("spiritlm.tokenizers.train:train_tokenizer", {}),
    "tokenizer dump-features": ("spiritlm.tokenizers.features:FeatureConfig", {"hubert": "checkpoint"}),
    "corpus synth": ("spiritlm.corpus.synth:SynthConfig", {}),
    "corpus segment": ("spiritlm.corpus.segment:SegmentConfig", {}),
    "corpus align": ("spiritlm.corpus.align:align_manifest", {}),
    "data build": ("spiritlm.interleave:InterleaveConfig", {}),
    "data build ": ("spiritlm.data.build:build_dataset", {}),
    "data train-text-tokenizer": ("spiritlm.text_tokenizer:SpiritTextTokenizer.train", {}),
    "data inspect": ("spiritlm.data.inspect:inspect_dir", {"text_tokenizer": "tokenizer"}),
    "checkpoint export": ("spiritlm.train.export:export_checkpoint", {"text_tokenizer": "tokenizer_model"}),
    "serve": ("spiritlm.serve.config:ServeLimits", {}),
    "eval asr": ("spiritlm.evals.asr:AsrConfig", {}),
    "eval ic": ("spiritlm.evals.ic:IcConfig", {}),
    "eval zeroshot": ("spiritlm.evals.zeroshot:ZeroshotConfig", {}),
    "eval tts": ("spiritlm.evals.tts:TtsConfig", {}),
    "eval stsp": ("spiritlm.evals.stsp:StspConfig", {}),
    "eval judges": ("spiritlm.judges.train:AsrTrainConfig", {"asr_steps": "steps", "asr_batch_size": "batch_size"}),
    "eval judges ": ("spiritlm.judges.train:JudgesConfig", {}),
    "eval judges  ": ("spiritlm.judges.train:train_judges", {}),
}
# How a command's default may differ from its API's, and why.
# A command serves a person at a terminal, the API a program: the command refuses to replace a
# finished output, exits non-zero on skipped items and shows progress bars, the API leaves those
# decisions to its caller (which then reads the returned counts).
POLICY_FLAGS = {"overwrite", "allow_skips", "progress"}
API_DEFAULT_DIFFERS = {
    ("generate", "seed"): "the command is reproducible by default (seed 0); the Python API samples afresh unless given a seed",
    ("vocoder train", "batch_size"): "None: the preset's (vocoder.train.recipe_defaults), as --segment_units and --disc_width_div",
    ("vocoder train", "segment_units"): "None: the preset's",
    ("vocoder train", "disc_width_div"): "None: the preset's",
    ("vocoder synth", "speaker"): "None: each line's speaker field, else row 0 (the API takes one speaker for one input)",
    ("vocoder synth", "style_id"): "the flag takes an index or a name from styles.txt (a string)",
    ("tokenize", "shard"): "None: the launcher's RANK / SLURM_PROCID (spiritlm.launch.shard_from_env), else 0",
    ("tokenize", "num_shards"): "None: the launcher's WORLD_SIZE / SLURM_NTASKS, else 1",
    ("corpus align", "shard"): "None: the launcher's RANK / SLURM_PROCID, else 0",
    ("corpus align", "num_shards"): "None: the launcher's WORLD_SIZE / SLURM_NTASKS, else 1",
    ("tokenize", "batch_seconds"): "the API keeps the manifest's order unless asked to sort by length; the command sorts "
                                   "(80 s of padded audio per batch) for speed",
    ("data build", "group_words"): "-1: chosen from the corpus by build_dataset (InterleaveConfig holds the value used)",
    ("data inspect", "color"): "the flag's auto/always/never becomes the API's bool (auto: when writing to a terminal)",
    ("eval zeroshot", "tasks"): "the flag is one comma-separated string of the API's task names",
    ("eval tts", "speaker"): "the flag takes a row number or a name from speakers.txt (a string)",
    ("eval judges", "asr_steps"): "None: the --preset recipe's (recipes/configs/judges-tiny.yaml)",
    ("eval judges", "asr_batch_size"): "None: the --preset recipe's",
    ("eval judges", "max_asr_train"): "None: the --preset recipe's",
}


def _api_defaults(target: str) -> dict:
    import dataclasses
    import importlib

    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(obj).parameters.items() if p.default is not p.empty}


def test_a_command_declares_the_defaults_of_the_api_it_calls():
    """Issue 19: wrappers repeated their API's parameters and the defaults drifted (`threads: int = 1`
    in the command, `None` in the API; `generate --max_new_tokens` 100, `SpiritLM.generate` 200).
    Where a command forwards a flag to an API, the default is the API's (or the command reads it
    from the API's dataclass: spiritlm.cli.flags_from), except the commented entries above."""
    commands = {f"{g} {n or ''}".strip(): fn for g, n, fn in ALL}
    bad, compared = [], 0
    for key, (target, renamed) in API_OF.items():
        command = key.strip()
        api = _api_defaults(target)
        for p in inspect.signature(commands[command]).parameters.values():
            name = renamed.get(p.name, p.name)
            if name not in api or p.default is p.empty or p.name in POLICY_FLAGS or (command, p.name) in API_DEFAULT_DIFFERS:
                continue
            compared += 1
            same = list(p.default) == list(api[name]) if isinstance(p.default, (list, tuple)) else p.default == api[name]
            if not same:
                bad.append(f"spiritlm {command} --{p.name} {p.default!r}, but {target}'s {name} is {api[name]!r}")
    assert not bad, "\n".join(bad)
    assert compared > 40  # the table maps most of the forwarded flags


def test_api_default_allow_list_is_not_stale():
    commands = {f"{g} {n or ''}".strip(): fn for g, n, fn in ALL}
    stale = []
    for (command, flag), _ in API_DEFAULT_DIFFERS.items():
        target, renamed = next(v for k, v in API_OF.items() if k.strip() == command)
        api = {}
        for k, (t, r) in API_OF.items():
            if k.strip() == command:
                api.update({r2: v for r2, v in _api_defaults(t).items()})
        p = inspect.signature(commands[command]).parameters[flag]
        if api.get(renamed.get(flag, flag), p.default) == p.default:
            stale.append((command, flag))
    assert not stale, stale


#: commands whose outputs later stages trust bit for bit, or whose figures the README quotes: their
#: --threads defaults to 1, so a seed gives the same files whatever the machine's core count
#: (docs/architecture.md, "numerics.py")
THREADS_DEFAULT_ONE = {"tokenizer train", "tokenize", "vocoder train", "vocoder eval", "demo"}
THREADS_HELP = "CPU threads of torch, BLAS and OpenMP (0: leave them as they are)"


def test_threads_flag_means_one_thing_in_every_command():
    """Issue 19: --threads pinned torch's pool only in corpus align, eval stsp and the vocoder
    commands but every pool elsewhere, under four help texts. Now: one type, one help text, one
    of two defaults (1 where the outputs are trusted bit for bit, 0 elsewhere)."""
    from jsonargparse.typing import NonNegativeInt

    import docstring_parser

    seen, bad = set(), []
    for group, name, fn in ALL:
        params = inspect.signature(fn).parameters
        if "threads" not in params:
            continue
        command = f"{group} {name or ''}".strip()
        seen.add(command)
        p = params["threads"]
        helps = {a.arg_name: a.description for a in docstring_parser.parse(fn.__doc__ or "").params}
        want = 1 if command in THREADS_DEFAULT_ONE else 0
        if p.annotation not in (NonNegativeInt, "NonNegativeInt"):
            bad.append(f"{command}: --threads is {p.annotation}")
        if p.default != want:
            bad.append(f"{command}: --threads defaults to {p.default}, expected {want}")
        if not " ".join(helps.get("threads", "").split()).startswith(THREADS_HELP):
            bad.append(f"{command}: --threads help {helps.get('threads')!r}")
    assert not bad, "\n".join(bad)
    assert THREADS_DEFAULT_ONE <= seen and len(seen) >= 12


def test_threads_pins_blas_and_openmp_pools_and_restores_them():
    """`numerics.threads` is the one meaning of --threads: torch's pool and every BLAS/OpenMP pool."""
    import torch
    from threadpoolctl import threadpool_info

    from spiritlm.numerics import threads

    before_torch = torch.get_num_threads()
    before = sorted((p["internal_api"], p["filepath"], p["num_threads"]) for p in threadpool_info())
    with threads(1):
        assert torch.get_num_threads() == 1
        pools = threadpool_info()
        assert any(p["user_api"] == "blas" for p in pools)
        assert all(p["num_threads"] == 1 for p in pools), pools
    assert torch.get_num_threads() == before_torch
    after = sorted((p["internal_api"], p["filepath"], p["num_threads"]) for p in threadpool_info())
    assert [a for a in after if a[:2] in {b[:2] for b in before}] == before
