"""The layout says what each file holds: no import cycles, one definition of each shared constant,
one manifest reader, one synthetic-data generator, test fixtures outside the package (issue 12, items 18-19)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> import name (see setup.py / docs/architecture.md)
ROOTS = {"spiritlm": "spiritlm", "tokenizers": "spiritlm.tokenizers", "vocoder": "spiritlm.vocoder",
         "recipes": "spiritlm.recipes", "evals": "spiritlm.evals"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the project that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    # a package's __init__ re-exporting its submodules is not a cycle of concerns
    cycles = sorted(
        f"{a} <-> {b}" for a in graph for b in graph[a]
        if a in graph.get(b, ()) and a < b and not (a.startswith(b + ".") or b.startswith(a + "."))
    )
    assert not cycles, cycles


def test_shared_constants_are_defined_once():
    defs: dict[str, list[str]] = {"SAMPLE_RATE": [], "SUBSETS": [], "IGNORE_INDEX": [], "IGNORE": [], "STREAM_RATES": [], "UNIT_HOP": []}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id in defs and isinstance(getattr(node, "value", None), (ast.Constant, ast.Tuple, ast.UnaryOp, ast.Dict)):
                    defs[t.id].append(name)
    assert defs["SAMPLE_RATE"] == ["spiritlm.constants"], defs
    assert defs["SUBSETS"] == ["spiritlm.constants"], defs
    assert defs["STREAM_RATES"] == defs["UNIT_HOP"] == ["spiritlm.constants"], defs
    assert defs["IGNORE_INDEX"] + defs["IGNORE"] == ["spiritlm.constants"], defs


def test_one_reader_one_generator_and_fixtures_in_tests():
    assert not (REPO / "tokenizers" / "manifest.py").exists()  # spiritlm.corpus.manifest reads every manifest
    assert not (REPO / "tokenizers" / "_compat.py").exists()  # it is tokenizers/utils.py
    assert not (REPO / "spiritlm" / "model" / "testing.py").exists()  # toy data: spiritlm.data.synthetic; tests/fixtures.py
    assert not (REPO / "tests" / "data" / "data_pipeline" / "generate.py").exists()
    assert not (REPO / "recipes" / "train.py").exists()  # the command is spiritlm/train/cli.py
    from spiritlm import cli

    assert not hasattr(cli, "register")
    src = (REPO / "tokenizers" / "train.py").read_text()
    assert "_load_all" not in src and "load_audio_batch" in src


def _import_graph():
    """A grimp graph of every module of the project, imports inside functions included.

    grimp's own builder scans only a root package's folder, and the stage folders sit beside
    ``spiritlm/`` (see spiritlm/__init__.py), so the graph is built from the same AST walk as
    the tests above and then judged by import-linter's own contract classes.
    """
    import grimp

    mods = _modules()
    graph = grimp.ImportGraph()
    for name in mods:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # namespace folders (tokenizers/, recipes/) are modules too
            graph.add_module(".".join(parts[:i]))
    for name, path in mods.items():
        for target in _imports(name, path, set(mods)):
            graph.add_import(importer=name, imported=target)
    return graph


def _contracts():
    import tomllib

    import importlinter.configuration
    from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
    from importlinter.contracts.layers import LayersContract

    importlinter.configuration.configure()  # the settings (a timer) its contracts read
    kinds = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["spiritlm"]["import-contracts"]
    out = []
    for key, options in table.items():
        options = dict(options)
        kind, name = kinds[options.pop("type")], options.pop("name")
        out.append(kind(name=name, session_options={"root_packages": ["spiritlm"]}, contract_options=options))
    return out


def test_import_contracts_hold(capsys):
    """The stage order of docs/architecture.md and "no cycles", as import-linter contracts."""
    graph = _import_graph()
    broken = []
    for contract in _contracts():
        check = contract.check(graph, verbose=False)
        if not check.kept:
            contract.render_broken_contract(check)
            broken.append(contract.name)
    assert not broken, f"{broken}:\n{capsys.readouterr().out}"


def test_import_contracts_catch_a_backward_import():
    """The contracts fail on a graph with one import back up the pipeline (so they can fail)."""
    graph = _import_graph()
    graph.add_import(importer="spiritlm.tokenizers.kmeans", imported="spiritlm.generation")
    graph.add_import(importer="spiritlm.errors", imported="spiritlm.atomic")
    kept = {c.name: c.check(graph, verbose=False).kept for c in _contracts()}
    assert kept == {"stages import only forward": False, "no import cycles between sibling modules": False}, kept


def _modules_with_doctests() -> list[str]:
    return sorted(name for name, path in _modules().items() if ">>> " in path.read_text())


@pytest.mark.parametrize("module", _modules_with_doctests())
def test_doctests(module):
    """Every docstring example in the project runs (speechbrain-style shape examples stay true)."""
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module} has '>>> ' but no example ran"
    assert result.failed == 0, f"{result.failed} failing doctest(s) in {module}"


def test_tests_share_helpers_through_fixtures_only():
    """A test module imports no other test module: shared builders live in tests/fixtures.py."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not offenders, offenders


def test_jiwer_is_called_in_one_place():
    """Edit-distance rates share one counting rule (spiritlm/edit_distance.py), so jiwer is imported only there."""
    users = sorted(name for name, path in _modules().items()
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "jiwer" in ((n.module or "") if isinstance(n, ast.ImportFrom) else " ".join(a.name for a in n.names))
                          for n in ast.walk(ast.parse(path.read_text()))))
    assert users == ["spiritlm.edit_distance"], users


def test_renames_go_through_spiritlm_atomic():
    """Outputs are published by spiritlm.atomic (atomic_file / atomic_path / atomic_dir / publish_dir).

    A rename elsewhere must say on its line or the line above why it is not one of those
    (a comment starting ``# atomic:``), so a new hand-rolled tmp+rename does not slip in.
    """
    offenders = []
    for name, path in _modules().items():
        if name == "spiritlm.atomic":
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                    node.func.attr == "rename"  # os.rename, Path.rename
                    or (node.func.attr == "replace" and isinstance(node.func.value, ast.Name) and node.func.value.id == "os")):
                near = " ".join(lines[max(0, node.lineno - 2): node.lineno])
                if "# atomic:" not in near:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_padding_masks_are_defined_once():
    """Length masks and padded batches have one home (spiritlm/tensors.py): no other module defines
    a mask function or writes the ``arange(T)[None, :] < lengths[:, None]`` idiom, and none fills
    a zeros tensor row by row (``out[i, : n] = row`` in a loop; ``pad_batch`` does it)."""
    import re

    idiom = re.compile(r"arange\([^)]*\)\[None, :\]\s*<|arange\([^)]*\)\.unsqueeze\(0\)\s*<")
    defs, idioms, loops = [], [], []
    for name, path in _modules().items():
        src = path.read_text()
        tree = ast.parse(src)
        defs += [f"{name}.{n.name}" for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and re.fullmatch(r"_?lengths?_(to_)?mask", n.name)]
        if name != "spiritlm.tensors":
            idioms += [f"{name}:{src[: m.start()].count(chr(10)) + 1}" for m in idiom.finditer(src)]
        for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):
            for st in loop.body:
                if not (isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Subscript)):
                    continue
                index, value = st.targets[0].slice, st.value
                row_slice = (isinstance(index, ast.Tuple) and len(index.elts) == 2 and isinstance(index.elts[1], ast.Slice)
                             and (index.elts[1].lower is None) != (index.elts[1].upper is None))
                # a row copied in (a name, or a tensor made of one), not a row computed from the batch itself
                copied = isinstance(value, ast.Name) or (isinstance(value, ast.Call) and (
                    getattr(value.func, "attr", None) or getattr(value.func, "id", None)) in ("tensor", "from_numpy", "as_tensor", "reshape", "float"))
                if row_slice and copied:
                    loops.append(f"{name}:{st.lineno}")
    assert defs == ["spiritlm.tensors.length_mask"], defs
    assert not idioms, idioms
    assert not loops, loops


#: A function longer than this says why (issue 19; benchmarks/function_lengths.py measures). The
#: functions over it when the rule was written have since been split or given a reason.
LONG_FUNCTION = 80


def test_no_new_function_over_80_lines_without_a_reason():
    """A function longer than LONG_FUNCTION lines (``def`` to its last line) says why on its ``def``
    line or the line above (a comment starting ``# long:``)."""
    offenders = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONG_FUNCTION:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if "# long:" not in " ".join(lines[max(0, first - 2): node.lineno]):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not offenders, offenders



def test_apis_log_with_logging_not_a_callable():
    """Progress goes through stdlib ``logging`` (spiritlm/logs.py shows it, rank 0 only): no function
    takes a ``log`` parameter (a line callable threaded through the API, ``log=print``)."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                params = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {getattr(node, 'name', 'lambda')}({p})"
                              for p in params if p in ("log", "log_fn", "logger", "print_fn")]
    assert not offenders, offenders


def test_thread_counts_are_set_in_one_place():
    """``torch.set_num_threads`` and threadpoolctl's limits are called only in ``spiritlm.numerics``
    (context managers that restore the old counts): every ``--threads`` and trainer goes through them."""
    offenders = []
    for name, path in _modules().items():
        if name == "spiritlm.numerics":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                    "set_num_threads", "set_num_interop_threads", "threadpool_limits"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


#: The homes of JSON-lines reading: manifests, units files, a training run's metrics.jsonl.
JSONL_READERS = {"spiritlm.corpus.manifest", "spiritlm.units_jsonl", "spiritlm.metrics_log"}


def test_jsonl_files_are_read_in_their_homes():
    """A loop that parses its lines with ``json.loads(line)`` (a hand-rolled JSONL reader) lives in
    JSONL_READERS; elsewhere it reads some other layout (Meta's STSP files, a shard's part file)
    and says which on the ``json.loads`` line or the line above (a comment starting ``# jsonl:``),
    so a new manifest or units reader does not slip in beside the one of each."""
    offenders = []
    for name, path in _modules().items():
        if name in JSONL_READERS:
            continue
        lines = path.read_text().splitlines()
        for loop in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.For)):
            bound = {t.id for t in ast.walk(loop.target) if isinstance(t, ast.Name)}
            for st in loop.body:
                for call in ast.walk(st):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "loads"
                            and getattr(call.func.value, "id", None) == "json" and call.args
                            and isinstance(call.args[0], ast.Name) and call.args[0].id in bound
                            and "# jsonl:" not in " ".join(lines[max(0, call.lineno - 2): call.lineno])):
                        offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert not offenders, offenders


#: Modules still holding a rate as a number (to be changed with them; the set may only shrink):
#: vocoder/model.py's harmonic-source defaults (sample_rate=16000), the file of the vocoder's speed work.
RATES_BEFORE_THE_RULE = {"spiritlm.vocoder.model"}


def test_rates_are_written_once():
    """16 kHz, the 640-sample unit hop and 12.5 Hz are spiritlm.constants' SAMPLE_RATE, UNIT_HOP and
    STREAM_RATES: no other module writes those numbers, unless the line says why (a comment
    starting ``# rate:``, e.g. a library's own list of rates)."""
    offenders, holders = [], set()
    for name, path in _modules().items():
        if name == "spiritlm.constants":
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in (16000, 640, 12.5)
                    and "# rate:" not in lines[node.lineno - 1]):
                holders.add(name)
                if name not in RATES_BEFORE_THE_RULE:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert not offenders, offenders
    assert RATES_BEFORE_THE_RULE <= holders, f"no longer holds a rate, remove from RATES_BEFORE_THE_RULE: {sorted(RATES_BEFORE_THE_RULE - holders)}"



#: Modules allowed to write or resample audio outside spiritlm/audio.py, each with why.
AUDIO_IO_ELSEWHERE = {
    "spiritlm.judges.models": "torchaudio's sinc resampling of 16 kHz clips to a Hugging Face emotion classifier's own rate "
                              "(a torch path inside inference); spiritlm.audio.resample's polyphase filter would change "
                              "what the judge hears, so its STSP accuracies",
}


def _audio_io_calls(path: Path) -> list[str]:
    """``path:line what`` of each soundfile write or header read and each resampler call or import in a module."""
    tree = ast.parse(path.read_text())
    sf_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "soundfile"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("soundfile", "scipy.signal"):
            found += [f"{node.lineno} from {node.module} import {a.name}" for a in node.names if a.name in ("write", "info", "resample_poly", "resample")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            dotted = ast.unparse(node.func)
            if (isinstance(node.func.value, ast.Name) and node.func.value.id in sf_names and node.func.attr in ("write", "info")) or \
                    node.func.attr in ("resample_poly", "Resample") or dotted.endswith(("functional.resample", "librosa.resample")):
                found.append(f"{node.lineno} {dotted}")
    return [f"{path.relative_to(REPO)}:{f}" for f in found]


def test_audio_is_written_and_resampled_in_spiritlm_audio():
    """soundfile writes (``sf.write``), header reads (``sf.info``) and resampling (scipy's
    ``resample_poly``, torchaudio's, librosa's) live in spiritlm/audio.py (``write_audio``,
    ``save_wav``, ``audio_info``, ``resample``, ``to_pcm16``): one WAV writer, one header reader
    (one message for an unreadable file) and one resampler, so two stages cannot render the same
    audio differently. AUDIO_IO_ELSEWHERE says why
    a module keeps its own; it may only shrink."""
    offenders, holders = [], set()
    for name, path in _modules().items():
        if name == "spiritlm.audio":
            continue
        calls = _audio_io_calls(path)
        if calls:
            holders.add(name)
            if name not in AUDIO_IO_ELSEWHERE:
                offenders += calls
    assert not offenders, offenders
    assert set(AUDIO_IO_ELSEWHERE) <= holders, f"no longer writes or resamples audio, remove from AUDIO_IO_ELSEWHERE: {sorted(set(AUDIO_IO_ELSEWHERE) - holders)}"
    assert _audio_io_calls(REPO / "spiritlm" / "audio.py"), "the rule looks for calls spiritlm/audio.py itself makes"


def test_eval_tasks_share_one_signature():
    """Every task of evals/ is ``run_<task>(model, inputs, config=None, out_dir=None, *, progress) -> EvalResult``
    with a ``<Task>Config`` dataclass of settings (all defaulted) whose fields are its command's settings
    flags (spiritlm.cli.flags_from), so a new task or flag cannot take another shape."""
    import dataclasses
    import importlib
    import inspect

    from spiritlm.evals.cli import COMMANDS

    tasks = sorted(n.name for path in (REPO / "evals").glob("*.py") for n in ast.parse(path.read_text()).body
                   if isinstance(n, ast.FunctionDef) and n.name.startswith("run_"))
    assert tasks == ["run_asr", "run_ic", "run_stsp", "run_tts", "run_zeroshot"], tasks
    for fn_name in tasks:
        task = fn_name[len("run_"):]
        mod = importlib.import_module(f"spiritlm.evals.{task}")
        fn, config = getattr(mod, fn_name), getattr(mod, f"{task.capitalize()}Config")
        params = list(inspect.signature(fn).parameters.values())
        assert [(p.name, p.kind.name) for p in params] == [
            ("model", "POSITIONAL_OR_KEYWORD"), ("inputs", "POSITIONAL_OR_KEYWORD"), ("config", "POSITIONAL_OR_KEYWORD"),
            ("out_dir", "POSITIONAL_OR_KEYWORD"), ("progress", "KEYWORD_ONLY")], fn_name
        assert params[2].default is None and params[3].default is None, fn_name
        assert fn.__annotations__["model"] == "EvalModel" and fn.__annotations__["return"] == "EvalResult", fn_name
        assert fn.__annotations__["config"] == f"{config.__name__} | None", fn_name
        assert dataclasses.is_dataclass(config) and config() is not None  # every setting has a default
        assert f"(``{config.__qualname__}``)" in (COMMANDS[task].__doc__ or ""), f"eval {task}: its flags are not made from {config.__name__}"
