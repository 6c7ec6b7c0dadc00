"""The ``spiritlm`` console command.

Each command group lives next to the code it drives and is imported only when it is used, so
that ``spiritlm corpus check`` does not pay for importing torch, transformers and fairseq2.
A group module exposes ``COMMANDS``: either one function (a single command such as
``spiritlm tokenize``) or a dict of name -> function (``spiritlm corpus synth``). jsonargparse
builds the parser, ``--help`` included, from each function's signature and docstring.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence

import jsonargparse

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


def _summary(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _run(fn: Callable, args: list[str], prog: str):
    if getattr(fn, "cli_argv", False):  # a command with its own parser (spiritlm train's recipe parser)
        return fn(args, prog=prog)
    if "config" in inspect.signature(fn).parameters:
        # jsonargparse.CLI drops a parameter named `config` after parsing (it reserves the name for
        # its config-file option), so `vocoder train --config base` silently trained `tiny`
        parser = jsonargparse.ArgumentParser(prog=prog, description=_plain_help(fn).__doc__)
        parser.add_function_arguments(_plain_help(fn), as_positional=getattr(fn, "cli_positional", False))
        ns = parser.parse_args(args)
        return fn(**{name: ns[name] for name in inspect.signature(fn).parameters})
    return jsonargparse.CLI(_plain_help(fn), args=args, prog=prog, as_positional=getattr(fn, "cli_positional", False))


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
        raise SystemExit(1) from None


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
