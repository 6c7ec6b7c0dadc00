"""The exception a command raises for a problem the user can fix, and how the CLI prints it.

Raise :class:`UserError` (or a subclass) with a one-line message that names the file (and line)
and the problem in the words of the command's flags::

    raise UserError(f"{path}:{lineno}: unit 'abc' is not an integer (--units)")

``spiritlm`` prints such errors as one line, ``spiritlm <command>: error: <message>``, and exits
with status 1 (2 for a flag the parser refuses: :class:`FlagError`); the traceback is shown only with ``--debug`` or ``SPIRITLM_DEBUG=1``. The
project's older error classes (``AudioError``, ``ManifestError``, …) are printed the same way.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or flags; its message is the whole story (one line)."""


class FlagError(UserError):
    """A flag the command's parser refuses (unknown, missing, or a value outside its type's range):
    raised by :func:`spiritlm.cli.flag_error`, printed as one line, exit status 2 as argparse's."""


def one_line(exc: BaseException) -> str:
    """The exception's message folded to one line (the first line of a multi-line message, plus a count)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else text
    return f"{lines[0]} (+{len(lines) - 1} more lines; rerun with --debug)"
