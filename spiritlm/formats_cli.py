"""``spiritlm formats``: convert between unit dicts and token strings from the shell."""

from __future__ import annotations

import json
import sys

from spiritlm.cli import positional
from spiritlm.errors import UserError
from spiritlm.formats import UnitFormatError, check_unit_dict, split_modalities, string_to_units, units_to_string


def to_string(units: str, expressive: bool = False) -> None:
    """Prints the token string of a unit dict.

    Args:
        units: the unit dict as JSON, e.g. '{"hubert": "1 1 2", "pitch": "3", "style": "4"}',
            or '-' to read one dict per line from standard input (Meta's units JSONL). Unit
            values must be integers >= 0; anything else is an error naming the line.
        expressive: include pitch and style tokens (Spirit LM Expressive).
    """
    lines = sys.stdin if units == "-" else [units]
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"<stdin>:{lineno}" if units == "-" else "--units"
        try:
            d = json.loads(line)  # jsonl: unit dicts piped on stdin, one at a time (units_jsonl reads files)
            check_unit_dict(d)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
        except UnitFormatError as e:
            raise UserError(f"{where}: {e}") from None
        print(units_to_string(d, has_pitch=expressive and "pitch" in d, has_style=expressive and "style" in d), flush=True)


@positional
def to_units(string: str, duplicate_hubert_for_multiple_pitch: bool = False) -> None:
    """Prints the unit dict (JSON) of a token string such as '[St3][Pi1][Hu5][Hu7]'.

    Args:
        string: the token string; text and markers are ignored.
        duplicate_hubert_for_multiple_pitch: repeat a HuBERT token for consecutive pitch tokens.
    """
    units = string_to_units(string, duplicate_hubert_for_multiple_pitch=duplicate_hubert_for_multiple_pitch, fallback_style=0)
    if not units["hubert"]:
        raise UserError(f"{string[:40]!r}: no well-formed [HuN] token (STRING)")
    print(json.dumps(units))


@positional
def split(string: str) -> None:
    """Prints the modality segments of a generated string, one per line ('text: ...' / 'speech: ...').

    Args:
        string: any string, e.g. '[Text]the cat[Speech][Hu3][Hu4]'.
    """
    for seg in split_modalities(string):
        print(f"{seg.modality}: {seg.render()}")


COMMANDS = {"to-string": to_string, "to-units": to_units, "split": split}
