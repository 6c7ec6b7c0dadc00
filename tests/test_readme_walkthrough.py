"""README.md's "The CLI" walkthrough runs as written (issue 18 item 16), so the README cannot drift.

The test reads the first ``bash`` block under "## The CLI", keeps every ``spiritlm`` command but
the lines marked ``# needs …`` (Meta's files, GPUs, Slurm), scales the sizes down (fewer
utterances, documents and steps: SCALE below, the only change to the commands) and runs them
with bash, in order, in an empty temporary folder — not the repository root, so recipe names
must resolve from anywhere.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

#: flag -> value used instead of the README's (sizes only)
SCALE = {"--num_utts": "120", "--num_sentences": "1000", "--train.max_steps": "3"}
#: options appended to the commands starting so (sizes only; later options override earlier ones)
EXTRA = {
    "spiritlm train": ["--train.max_steps", "3", "--optim.warmup_steps", "1", "--train.val_every", "3",
                       "--train.save_every", "3", "--train.log_every", "1"],
    "spiritlm tokenizer train": ["--max_utts", "60"],
    "spiritlm generate": ["--max_new_tokens", "8"],
}


def walkthrough_commands(text: str) -> list[str]:
    """The commands of the README's CLI walkthrough, one string each (continuations joined, comments dropped)."""
    section = text[text.index("## The CLI"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    commands, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        stripped = current.strip()
        current = ""
        if not stripped or stripped.startswith("#"):
            continue
        commands.append(stripped)
    return commands


def _scaled(command: str) -> list[str] | None:
    """The command as argv, sizes scaled down; None for lines marked ``# needs …`` or not ``spiritlm``."""
    code, _, comment = command.partition("  #")
    if comment.strip().startswith("needs"):
        return None
    argv = shlex.split(code)
    if not argv or argv[0] != "spiritlm":
        return None
    for i, a in enumerate(argv[:-1]):
        if a in SCALE:
            argv[i + 1] = SCALE[a]
    for prefix, extra in EXTRA.items():
        if " ".join(argv).startswith(prefix + " "):
            argv += extra
    return argv


def test_the_walkthrough_parses_into_commands():
    commands = walkthrough_commands(README.read_text())
    kept = [c for c in map(_scaled, commands) if c is not None]
    names = [" ".join(a[1:3]) for a in kept]
    assert names[0] == "corpus synth" and any(n.startswith("generate") for n in names)
    assert sum(n == "data build" for n in names) == 2  # both splits the recipe reads
    # what is left out says why
    skipped = [c for c in commands if _scaled(c) is None and c.startswith(("spiritlm", "torchrun", "sbatch"))]
    assert skipped and all("# needs" in c for c in skipped), skipped
    # every path a command reads was written by an earlier one (or is a recipe name)
    written = set()
    for argv in kept:
        for flag, value in zip(argv, argv[1:]):
            if flag in ("--manifest", "--units", "--speech_tokenizer", "--text_tokenizer", "--extra_text", "--data.data_dir",
                        "--data.val_dir", "--model.init_from", "--model"):
                root = value.split("/")[0]
                assert any(w == value or value.startswith(w + "/") or w.startswith(root) for w in written), (flag, value)
            if flag in ("--out", "--train.output_dir"):
                written.add(value)


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    printed = {}
    for command in walkthrough_commands(README.read_text()):
        argv = _scaled(command)
        if argv is None:
            continue
        res = subprocess.run(["bash", "-c", shlex.join(argv)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=1200)
        assert res.returncode == 0, f"$ {shlex.join(argv)}\n{res.stderr[-3000:]}"
        printed[" ".join(argv[1:3])] = res.stdout
    assert (tmp_path / "lm" / "tiny-interleaved").is_dir() and (tmp_path / "tokens" / "valid" / "index.json").is_file()
    assert re.search(r"^\[(speech|text)\] ", next(v for k, v in printed.items() if k.startswith("generate")), re.M)
