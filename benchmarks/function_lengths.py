"""The longest functions of the project (lines from ``def`` to the last line, docstring included).

    python benchmarks/function_lengths.py [--top 15] [--over 80]

Prints the ``--top`` longest, then how many exceed ``--over`` lines and how many of those carry no
``# long:`` reason comment (on the ``def`` line or the line above). tests/test_layout.py holds the
rule that there are none of those.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("spiritlm", "tokenizers", "vocoder", "evals", "recipes")


def function_lengths(repo: Path = REPO) -> list[tuple[int, str, bool]]:
    """``(lines, "path:line name", has a '# long:' reason)`` of every function, longest first."""
    rows = []
    for folder in FOLDERS:
        for path in sorted((repo / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    near = " ".join(lines[max(0, first - 2): node.lineno])
                    rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(repo)}:{node.lineno} {node.name}", "# long:" in near))
    return sorted(rows, key=lambda r: (-r[0], r[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--over", type=int, default=80)
    args = ap.parse_args()
    rows = function_lengths()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# function lengths at {rev or '?'}: python benchmarks/function_lengths.py --top {args.top} --over {args.over}")
    for n, where, reason in rows[: args.top]:
        print(f"{n:5d}  {where}{'  (# long: reason given)' if reason else ''}")
    over = [r for r in rows if r[0] > args.over]
    print(f"{len(rows)} functions; {len(over)} over {args.over} lines, {sum(not r[2] for r in over)} of them without a '# long:' reason")


if __name__ == "__main__":
    main()
