"""The ``spiritlm`` console command.

Each command group lives next to the code it drives and is imported only when it is used, so
that ``spiritlm corpus check`` does not pay for importing torch, transformers and fairseq2.
A group module exposes ``COMMANDS``: either one function (a single command such as
``spiritlm tokenize``) or a dict of name -> function (``spiritlm corpus synth``). jsonargparse
builds the parser, ``--help`` included, from each function's signature and docstring.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import re
import sys
import types
import typing
from pathlib import Path
from collections.abc import Callable, Sequence

import jsonargparse
from jsonargparse.typing import restricted_number_type

#: flag types several commands share beyond jsonargparse.typing's (PositiveInt, NonNegativeInt, …)
TopP = restricted_number_type("TopP", float, [(">", 0.0), ("<=", 1.0)], docstring="nucleus mass in (0, 1]")
Port = restricted_number_type("Port", int, [(">", 0), ("<", 65536)], docstring="TCP port 1-65535")

if typing.TYPE_CHECKING:
    from spiritlm.errors import FlagError

# name -> (module holding COMMANDS, one-line description)
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "corpus": ("spiritlm.corpus.cli", "synthesise the aligned corpus; import, align and segment real corpora; validate manifests"),
    "formats": ("spiritlm.formats_cli", "convert between unit dicts and token strings; split generated strings"),
    "tokenizer": ("spiritlm.tokenizers.cli", "speech tokenizers: dump features, train, assemble from checkpoints"),
    "tokenize": ("spiritlm.tokenizers.tokenize_cli", "tokenize a manifest's audio into Meta's units JSONL (sharded, resumable)"),
    "data": ("spiritlm.data.cli", "text tokenizer, interleaved documents, token shards; inspect them"),
    "train": ("spiritlm.train.cli", "train the LM from a YAML recipe (single process, torchrun, Slurm)"),
    "checkpoint": ("spiritlm.train.export", "training checkpoints: export a consolidated Hugging Face model (streamed), inspect"),
    "generate": ("spiritlm.generation_cli", "generate text and/or speech from a trained model"),
    "eval": ("spiritlm.evals.cli", "evaluate a model: few-shot asr/ic/tts, stsp, zero-shot likelihood tasks; train the judges (metrics.json + predictions.jsonl)"),
    "vocoder": ("spiritlm.vocoder.cli", "unit vocoder: synthesize units or token strings to WAV files; train and evaluate one"),
    "serve": ("spiritlm.serve.cli", "a local web page and API: talk to a model, hear speech answers as they stream"),
    "demo": ("spiritlm.recipes.demo", "the whole pipeline on the synthetic corpus, ending in a report (make demo)"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMAND_GROUPS)
    lines = [
        "usage: spiritlm <command> [<subcommand>] [options]",
        "",
        "Interleaved spoken and written language models, trainable end to end.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMAND_GROUPS.items()]
    lines += ["", "Run `spiritlm <command> --help` for the options of a command."]
    return "\n".join(lines)


def load_commands(group: str) -> Callable | dict[str, Callable]:
    """Imports a group's module and returns its ``COMMANDS``."""
    module_name, _ = COMMAND_GROUPS[group]
    return importlib.import_module(module_name).COMMANDS


def positional(fn: Callable) -> Callable:
    """Marks a command whose required parameters are given positionally (``spiritlm corpus check M``).

    Other commands take every parameter as ``--name value``.
    """
    fn.cli_positional = True  # type: ignore[attr-defined]
    return fn


def flags_from(api: Callable, *names: str) -> Callable[[Callable], Callable]:
    """Makes parameters ``names`` of ``api`` (a dataclass's fields, or a function's keyword
    parameters) flags of the decorated command.

    Their types, defaults and help are the API's: one declaration, so the command's defaults
    cannot drift from the API's. The command takes them as ``**settings`` (keyword arguments) and
    passes them on (``Config(**settings)``, ``run(..., **settings)``).
    """
    import dataclasses

    import docstring_parser

    hints = typing.get_type_hints(api)
    if dataclasses.is_dataclass(api):
        fields = {f.name: f for f in dataclasses.fields(api)}
        defaults = {n: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                    for n, f in fields.items() if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    else:
        defaults = {n: p.default for n, p in inspect.signature(api).parameters.items() if p.default is not p.empty}
    docs = {p.arg_name: p.description for p in docstring_parser.parse(api.__doc__ or "").params}
    missing = [n for n in names if n not in defaults or not docs.get(n)]
    if missing:
        raise TypeError(f"flags_from({api.__qualname__}): {missing} need a default and a line in its docstring")

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        lines = []
        for name in names:
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name], annotation=hints[name]))
            fn.__annotations__[name] = hints[name]
            lines.append(f"        {name}: {' '.join(docs[name].split())} (``{api.__qualname__}``)")
        fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        doc = (fn.__doc__ or "").rstrip()
        if "Args:" not in doc:
            doc += "\n\n    Args:"
        fn.__doc__ = doc + "\n" + "\n".join(lines) + "\n    "
        return fn

    return decorate


def _summary(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _run(fn: Callable, args: list[str], prog: str):
    """Parses ``args`` with the parser jsonargparse builds from ``fn``'s signature and calls ``fn``.

    The signature is the command's one declaration: types (``PositiveInt``, ``Literal[...]``, …)
    carry the ranges, so a bad value is refused here, in one line naming the flag
    (:func:`flag_error`). ``--config FILE`` is, in every command, a YAML file of the command's
    options (later flags override it); a command with a ``config`` parameter of its own takes its
    recipe there (a YAML file as well); ``spiritlm train``'s is read by the recipe parser, the
    only command with a parser of its own (``cli_argv``: named recipes, sections).
    """
    if getattr(fn, "cli_argv", False):
        return fn(args, prog=prog)
    import docstring_parser

    args = [f"--config={resolve_config(a[9:])}" if a.startswith("--config=") else a for a in args]
    args = [resolve_config(a) if i and args[i - 1] == "--config" else a for i, a in enumerate(args)]

    plain = _plain_help(fn)
    doc = docstring_parser.parse(plain.__doc__ or "")  # the description; Args become each flag's help
    description = "\n\n".join(t for t in (doc.short_description, doc.long_description) if t)
    parser = jsonargparse.ArgumentParser(prog=prog, description=description, exit_on_error=False)
    if "config" not in inspect.signature(fn).parameters:  # a command's own `config` is its recipe: a YAML file too
        parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                            help="a YAML file of this command's options (flags after it override it)")
    parser.add_function_arguments(plain, as_positional=getattr(fn, "cli_positional", False))
    try:
        ns = parser.parse_args(args)
    except argparse.ArgumentError as exc:
        raise flag_error(fn, exc, args) from None
    return fn(**{name: ns[name] for name in inspect.signature(fn).parameters})


def packaged_recipes() -> Path | None:
    """The folder of the recipes shipped with spiritlm (``recipes/configs``), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("spiritlm.recipes")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "configs").is_dir():
            return Path(location) / "configs"
    return None


def resolve_config(where: str) -> str:
    """A ``--config`` value: a file as given, else the packaged recipe of that name from any folder
    (``vocoder-tiny`` is ``recipes/configs/vocoder-tiny.yaml``), else as given (the parser names it)."""
    if Path(where).is_file():
        return where
    folder, name = packaged_recipes(), Path(where).name
    for candidate in (folder / name, folder / f"{name}.yaml") if folder is not None else ():
        if candidate.is_file():
            return str(candidate)
    return where


def flag_error(fn: Callable, exc: BaseException, args: Sequence[str]) -> FlagError:
    """jsonargparse's refusal of ``args`` as one line in the words of the flags.

    ``--shots -1`` for ``shots: NonNegativeInt`` gives ``--shots must be >= 0, got -1 (--shots)``.
    """
    from spiritlm.errors import FlagError

    text = str(exc)
    key = re.match(r'Parser key "([^"]+)"', text)
    if key is None:  # argparse's own: unknown options, a flag without its value, a missing one
        if text.startswith("unrecognized arguments:"):
            return FlagError(f"unknown option(s) {text.split(':', 1)[1].strip()} (see --help)")
        missing = re.match(r"the following arguments are required: (.*)", text)
        if missing and not getattr(fn, "cli_positional", False):
            names = [f"--{n.strip()}" for n in missing.group(1).split(",")]
            return FlagError(f"missing {', '.join(names)}")
        return FlagError(" ".join(text.split()))
    name = key.group(1)
    flag = f"--{name}"
    got = _given(name, args)
    rule = _rule(fn, name)
    if rule:
        return FlagError(f"{flag} must be {rule}, got {got} ({flag})")
    detail = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), "")
    return FlagError(f"{flag}: {detail} ({flag})")


def check_values(fn: Callable, **values: object) -> None:
    """Checks ``values`` against the types of ``fn``'s parameters, as parsing its flags would (for
    callers that do not come through the parser, such as the web API); raises :class:`FlagError`."""
    from spiritlm.errors import FlagError

    hints = typing.get_type_hints(fn)
    for name, value in values.items():
        hint = hints[name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        if value is None and union and len(options) < len(typing.get_args(hint)):
            continue
        t = options[0]
        try:
            ok = value in typing.get_args(t) if typing.get_origin(t) is typing.Literal else t(value) is not None
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise FlagError(f"--{name} must be {_rule(fn, name) or t.__name__}, got {value} (--{name})")


def _given(name: str, args: Sequence[str]) -> str:
    """The value typed after ``--name`` (the last one, as argparse keeps), else ``?``."""
    got = "?"
    for i, a in enumerate(args):
        if a == f"--{name}" and i + 1 < len(args):
            got = args[i + 1]
        elif a.startswith(f"--{name}="):
            got = a.split("=", 1)[1]
    return got


def _rule(fn: Callable, name: str) -> str:
    """The values parameter ``name`` of ``fn`` accepts, in words (``>= 1``, ``one of a, b``), or ""."""
    try:
        hint = typing.get_type_hints(fn).get(name)
    except Exception:  # an annotation that does not resolve: jsonargparse's words then
        return ""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if len(options) != 1:
        return ""
    t = options[0]
    if typing.get_origin(t) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(t))
    restrictions = getattr(t, "_restrictions", None)
    if restrictions:
        base = getattr(t, "_type", float)
        bounds = []
        for op, ref in restrictions:
            sym = _OPS[op.__name__]
            if base is int and sym in (">", "<"):  # integers: > 0 reads as >= 1
                sym, ref = sym + "=", ref + (1 if sym == ">" else -1)
            bounds.append((sym, ref))
        if len(bounds) == 2 and bounds[0][0][0] == ">" and bounds[1][0][0] == "<" and getattr(t, "_join", "and") == "and":
            (lo_op, lo), (hi_op, hi) = bounds
            return f"in {'[' if lo_op == '>=' else '('}{lo:g}, {hi:g}{']' if hi_op == '<=' else ')'}"
        return f" {getattr(t, '_join', 'and')} ".join(f"{sym} {ref}" for sym, ref in bounds)
    if t in (int, float):
        return "an integer" if t is int else "a number"
    return ""


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}


_RST_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


def _plain_help(fn: Callable) -> Callable:
    """``fn`` with its docstring in plain words for ``--help`` (no ``x``, :class:`X` markup)."""
    doc = fn.__doc__ or ""
    plain = _RST_ROLE.sub(r"\1", doc).replace("``", "")
    if plain == doc:
        return fn

    @functools.wraps(fn)
    def command(*args, **kwargs):
        return fn(*args, **kwargs)

    command.__doc__ = plain
    return command


def main(argv: Sequence[str] | None = None) -> None:
    """Runs ``spiritlm <command> …``; errors end in one line unless ``--debug``/``SPIRITLM_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SPIRITLM_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    from spiritlm.logs import console

    if debug:
        with console():
            _main(argv)
        return
    try:
        with console():  # the APIs' log records as plain lines, rank 0 only
            _main(argv)
    except KeyboardInterrupt:
        print("spiritlm: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # every command ends in one line; --debug shows the traceback
        where = " ".join(argv[:2]) if len(argv) > 1 and not argv[1].startswith("-") else (argv[0] if argv else "")
        print(f"spiritlm {where}: error: {_describe(exc)}", file=sys.stderr)
        raise SystemExit(2 if type(exc).__name__ == "FlagError" else 1) from None


def _describe(exc: BaseException) -> str:
    from spiritlm.errors import UserError, one_line

    if isinstance(exc, (UserError, OSError)) or type(exc).__name__.endswith("Error") and type(exc).__module__.startswith("spiritlm"):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)} (unexpected; rerun with --debug for the traceback)"


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        from spiritlm import __version__

        print(f"spiritlm {__version__}")
        return
    group, rest = argv[0], argv[1:]
    if group not in COMMAND_GROUPS:
        print(f"spiritlm: unknown command {group!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    commands = load_commands(group)
    if callable(commands):
        _run(commands, rest, f"spiritlm {group}")
        return
    if not rest or rest[0] in ("-h", "--help"):
        width = max(len(n) for n in commands)
        print(f"usage: spiritlm {group} <subcommand> [options]\n\n{COMMAND_GROUPS[group][1]}\n\nsubcommands:")
        for name, fn in commands.items():
            print(f"  {name:<{width}}  {_summary(fn)}")
        print(f"\nRun `spiritlm {group} <subcommand> --help` for its options.")
        if not rest:
            raise SystemExit(2)
        return
    sub = rest[0]
    if sub not in commands:
        print(f"spiritlm {group}: unknown subcommand {sub!r} (choose from {', '.join(commands)})", file=sys.stderr)
        raise SystemExit(2)
    _run(commands[sub], rest[1:], f"spiritlm {group} {sub}")


if __name__ == "__main__":
    main()
