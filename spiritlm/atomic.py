"""Atomic outputs: files and directories that appear whole under their final name, or not at all.

Later runs trust what they find (resume checks, ``index.json``, ``tokenizer.model``), so an
interrupted or failed run must leave either the previous output or nothing: outputs are written
under a temporary name in the same folder and renamed (``os.replace``) once complete, and the
folders a failed run created are removed again.

The one rule of every command that writes an output (``--out``):

* the output appears only when complete (:func:`atomic_dir`, :func:`atomic_file`, or a marker
  file such as ``metrics.json`` written last);
* an existing *finished* output is replaced only with ``--overwrite true``
  (:func:`check_output` / :func:`check_new_output`, called before the slow parts), and only
  once the new one is complete;
* an interrupted run resumes (``tokenize``, ``dump-features``) or is redone by a plain rerun,
  without removing files that other writers (or the user) keep beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from spiritlm.errors import UserError


def check_parents(path: str | os.PathLike, flag: str = "--out") -> None:
    """One-line :class:`UserError` when an existing parent of ``path`` is a file, not a folder."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{parent}: is a file, not a folder, so {path} cannot be created in it ({flag})")


def make_parents(path: str | os.PathLike, flag: str = "--out") -> list[Path]:
    """Creates the missing parent folders of ``path``; returns them, outermost first.

    Raises:
        UserError: an existing parent is a file (names it and ``flag``).
    """
    check_parents(path, flag)
    created: list[Path] = []
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    created.reverse()
    for d in created:
        d.mkdir(exist_ok=True)
    return created


def remove_empty(dirs: list[Path]) -> None:
    """Removes the folders of :func:`make_parents` that are still empty (innermost first)."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_stale(path: Path) -> None:
    """Removes the temporary folders of ``path`` left by killed runs (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        try:  # .NAME.tmp-PID, or .NAME.tmp-PID.EXT from atomic_path(..., suffix=".EXT")
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # a live run is building it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Renames the whole folder ``tmp`` to ``final``; an existing ``final`` is moved aside first
    and removed only once ``tmp`` is in place (an interruption leaves one of the two)."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    return final


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Opens a temporary file next to ``path``; renames it to ``path`` when the block succeeds.

    On an exception the temporary file (and any parent folder made for it) is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    created = make_parents(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to ``path`` for a writer that takes a path (``torch.save``,
    ``np.save``, safetensors, ``soundfile``, matplotlib); renames it to ``path`` when the block
    succeeds, removes it (and parent folders made for it) when it fails.

    ``suffix`` is appended to the temporary name for writers that choose a format by extension
    (``".npy"``, ``".wav"``, ``".png"``).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("whole")
    >>> (d / "x.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('whole', ['x.txt'])
    >>> import shutil; shutil.rmtree(d)
    """
    path = Path(path)
    created = make_parents(path)
    tmp = path.with_name(f"{_tmp_name(path).name}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        remove_empty(created)
        raise


def check_new_output(
    path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite", markers: tuple[str, ...] = (), out_flag: str = "--out"
) -> None:
    """Refuses an existing non-empty ``path`` unless ``overwrite`` (message names ``flag``).

    For outputs built whole under a temporary name (:func:`atomic_dir`): whatever is at ``path``
    is a finished output. With ``markers`` (file names an output of this kind holds), a folder
    holding none of them is refused even with ``overwrite``: replacing it would delete something
    else (``--out .``). A parent of ``path`` that is a file is refused too.
    """
    path = Path(path)
    check_parents(path, out_flag)
    if path.is_dir() and any(path.iterdir()) or path.is_file():
        if not overwrite:
            raise UserError(f"{path}: already exists; pass {flag} true to replace it ({out_flag})")
        if markers and not (path.is_dir() and any((path / m).exists() for m in markers)):
            raise UserError(f"{path}: exists and holds no {' or '.join(markers)}: not replacing it; choose another {out_flag}")


def check_output(
    path: str | os.PathLike, overwrite: bool, done: tuple[str, ...] = (), out_flag: str = "--out", flag: str = "--overwrite"
) -> bool:
    """The rule for an output folder whose files are written in place, a marker last (see the module doc).

    ``done`` names the marker files of a finished output (``metrics.json``); a folder holding one
    is refused unless ``overwrite``. A folder without any (absent, empty, or the leftovers of an
    interrupted run, or other files of the user's) is fine: the command writes its own files
    there and removes nothing else. With ``done=()`` ``path`` is a single output file, finished
    when it exists.

    Returns:
        whether a finished output is there (and ``overwrite`` allows replacing it).

    Raises:
        UserError: finished output without ``overwrite``, ``path`` of the wrong kind (a file
            where a folder goes or the reverse), a parent that is a file.
    """
    path = Path(path)
    check_parents(path, out_flag)
    if not done:  # a single file
        if path.is_dir():
            raise UserError(f"{path}: is a folder; give a file name ({out_flag})")
        finished = path.is_file()
    else:
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: is a file, not a folder ({out_flag})")
        finished = any((path / m).is_file() for m in done)
    if finished and not overwrite:
        raise UserError(f"{path}: already exists (a finished output); pass {flag} true to replace it ({out_flag})")
    return finished


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite", markers: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yields a temporary folder next to ``path`` to build an output directory in.

    When the block succeeds the folder becomes ``path`` (an existing ``path`` is replaced only
    with ``overwrite``, and only then); when it fails the folder, and parent folders made for it,
    are removed, and an existing ``path`` is left untouched.

    Raises:
        UserError: ``path`` exists, is not empty and ``overwrite`` is false, or it holds none of
            ``markers`` (see :func:`check_new_output`; checked first).
    """
    path = Path(path)
    check_new_output(path, overwrite, flag, markers)
    created = make_parents(path)
    _remove_stale(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise
