"""Layout of docs/architecture.md: stage folders import as spiritlm.*, and never shadow Hugging Face's tokenizers."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tokenizers", "vocoder", "recipes", "evals")


def _run_python(code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_tokenizers_from_repo_root_is_hugging_face():
    where = _run_python("import tokenizers; print(tokenizers.__file__)", ROOT)
    assert "site-packages" in where, where
    assert _run_python("import tokenizers; print(hasattr(tokenizers, 'Tokenizer'))", ROOT) == "True"


#: stage folders whose name is a package our dependencies import: an ``__init__.py`` there would
#: make ``import <name>`` from the repo root pick up our folder instead (Hugging Face's tokenizers).
#: ``vocoder`` and ``evals`` have one, for ``from spiritlm.vocoder import Vocoder``.
NO_INIT_STAGES = ("tokenizers", "recipes")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_folder_is_the_spiritlm_subpackage(stage):
    """Each stage file has one path on disk: no ``spiritlm/<stage>`` link or copy in the checkout."""
    assert not os.path.lexists(ROOT / "spiritlm" / stage)
    if stage in NO_INIT_STAGES:
        assert not (ROOT / stage / "__init__.py").exists()
    code = f"import importlib; m = importlib.import_module('spiritlm.{stage}'); print(list(m.__path__)[0])"
    assert Path(_run_python(code, Path("/"))).resolve() == (ROOT / stage).resolve()


def test_grep_sees_each_stage_file_once():
    """No second path to a stage file (a symlink or a leftover build/ copy) under the checkout."""
    seen: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", ".git") or "__pycache__" in rel.parts:
            continue
        seen.setdefault(str(path.resolve()), []).append(str(rel))
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, twice


@pytest.mark.parametrize("cwd", [ROOT, Path("/")])
def test_stages_import_under_spiritlm_namespace(cwd):
    code = "import importlib; " + "; ".join(
        f"m = importlib.import_module('spiritlm.{s}'); print(m.__name__)" for s in STAGES
    )
    assert _run_python(code, cwd).split() == [f"spiritlm.{s}" for s in STAGES]


@pytest.mark.slow
def test_regular_wheel_maps_stage_folders_under_spiritlm(tmp_path):
    """A non-editable build puts every stage under spiritlm/ and nothing at the top level.

    It builds from a copy of the tracked files, so no ``build/`` folder is left in the checkout.
    """
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("spiritlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"spiritlm", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for stage in STAGES:
        py_files = sorted(p.relative_to(ROOT / stage).as_posix() for p in (ROOT / stage).rglob("*.py") if "__pycache__" not in p.parts)
        for rel in py_files:
            assert f"spiritlm/{stage}/{rel}" in names, f"{stage}/{rel} missing from the wheel"
    assert "spiritlm/formats.py" in names
    assert "spiritlm/serve/static/index.html" in names  # the page of spiritlm serve
    assert any(n.endswith("entry_points.txt") for n in names)
