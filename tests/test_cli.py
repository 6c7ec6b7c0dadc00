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
