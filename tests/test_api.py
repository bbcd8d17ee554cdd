"""The front door: the Python API (README example), the default bundle, CLI polish, and the
import structure (the engine below export and training, the bundle format torch-free)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gazenlq.engine import SearchEngine
from gazenlq.errors import ParameterError
from gazenlq.nlq.submission import load_submission
from tests.conftest import REPO, script

SRC = REPO / "src"
COMMANDS = ("gaze-synth", "gaze-store", "gaze-ingest", "gaze-train", "gaze-export",
            "gaze-search", "gaze-eval")


# -- import structure, from the source (not from what one run happened to import) ---------

def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _runtime_nodes(node: ast.AST):
    """Every node of ``node`` that can run: ``if TYPE_CHECKING:`` blocks are left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for stmt in child.orelse for n in [stmt, *_runtime_nodes(stmt)])
            continue
        yield child
        yield from _runtime_nodes(child)


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    return found


def _closure(roots: list[str]) -> set[str]:
    """Modules reachable from ``roots`` (gazenlq modules followed, with their packages)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run first
        path = _module_file(name) if name.startswith("gazenlq") else None
        if path is not None:
            todo += sorted(_imports(name, path))
    return seen


def _package_modules(package: str) -> list[str]:
    root = SRC / Path(*package.split("."))
    return [".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted(root.rglob("*.py"))]


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_engine_sits_below_export_and_training_and_imports_no_torch():
    reached = _closure([*_package_modules("gazenlq.engine"), "gazenlq.cli.search"])
    assert not {m for m in reached if m.startswith(("gazenlq.export", "gazenlq.training",
                                                    "gazenlq.synth"))}
    assert not _top(reached) & {"torch", "onnx", "safetensors", "transformers"}


def test_bundle_format_is_torch_onnx_and_numba_free():
    reached = _closure(_package_modules("gazenlq.bundle"))
    assert {m for m in reached if m.startswith("gazenlq.")} <= {
        "gazenlq.bundle", *(f"gazenlq.bundle.{m}" for m in
                            ("default", "hashes", "manifest", "postprocess", "shapes",
                             "trt")),
        "gazenlq.atomic", "gazenlq.errors", "gazenlq.scalars", "gazenlq.timegrid"}
    assert not _top(reached) & {"torch", "onnx", "onnxruntime", "numba", "zarr"}


def test_training_does_not_import_synth_and_export_writes_what_the_engine_reads():
    training = _closure(_package_modules("gazenlq.training"))
    assert not {m for m in training if m.startswith("gazenlq.synth")}
    export = _closure(_package_modules("gazenlq.export"))
    assert "gazenlq.bundle.manifest" in export and not {
        m for m in export if m.startswith("gazenlq.engine")}


def test_the_import_graph_sees_lazy_imports():
    """The check above would catch an import hidden inside a function."""
    assert "gazenlq.kernels" in _closure(["gazenlq.engine.search"])


def test_importing_gazenlq_and_the_bundle_stays_light():
    code = ("import sys, gazenlq, gazenlq.bundle, gazenlq.bundle.default, gazenlq.bundle.trt; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numba', 'zarr') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- the Python API ---------------------------------------------------------------------

def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no Python example"
    return blocks[0]


@pytest.fixture()
def demo_layout(tiny_trained, tiny_bundle, tmp_path):
    """A working directory laid out as `make demo` leaves it (demo/egosim, demo/bundle)."""
    data, _ = tiny_trained
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "egosim").symlink_to(data.stores.parent)
    (tmp_path / "demo" / "bundle").symlink_to(tiny_bundle)
    return tmp_path


def test_readme_python_example_runs(demo_layout):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 12
    out = subprocess.run([sys.executable, "-c", code], cwd=demo_layout, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "where did I put the bulb" in out.stdout
    assert len(re.findall(r" s  score \d\.\d{3}", out.stdout)) == 3
    entries = load_submission(demo_layout / "submission.json")
    truth = json.loads((demo_layout / "demo" / "egosim" / "annotations" /
                        "nlq_test.json").read_text())
    asked = sum(len(a["language_queries"]) for v in truth["videos"] for c in v["clips"]
                for a in c["annotations"])
    assert 0 < len(entries) <= asked


def test_results_carry_their_own_timings_and_parameters_are_named(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    engine = SearchEngine.from_bundle(tiny_bundle, use_cache=False, write_cache=False)
    one = engine.search(data.stores, "where did I put the knife", top_k=2)
    two = engine.search(data.stores, ["where did I put the knife", "which tool did I use"])
    assert [len(r.moments) for r in one] == [2] and [len(r.moments) for r in two] == [5, 5]
    assert one[0].moments == two[0].moments[:2]
    assert 0 < one.timings.ground_model <= one.timings.total
    assert two.timings.windows == one.timings.windows  # per call, never accumulated
    nlq = engine.answer_nlq(data.val, data.stores)
    assert len(nlq.entries) == len(nlq.results) == len(nlq.queries) and nlq.clips > 0
    for entry, result in zip(nlq.entries, nlq.results):
        assert list(entry.predicted_times) == [(m.start_s, m.end_s) for m in result.moments]
    with pytest.raises(ParameterError, match=r"^window=102: must be a multiple of"):
        SearchEngine.from_bundle(tiny_bundle, window=102)
    with pytest.raises(ParameterError, match=r"^top_k=0"):
        engine.search(data.stores, "x", top_k=0)
    with pytest.raises(ParameterError, match=r"^device='gpu'"):
        SearchEngine.from_bundle(tiny_bundle, device="gpu")


# -- the CLI ----------------------------------------------------------------------------

def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([script(args[0]), *map(str, args[1:])], capture_output=True,
                          text=True, timeout=600, env=env)


def _one_line(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr


def test_every_command_has_version():
    from gazenlq import __version__

    for command in COMMANDS:
        out = _run(command, "--version")
        assert out.returncode == 0 and out.stdout.strip() == f"gazenlq {__version__}", command


def test_cache_flag_pair_and_library_errors_name_the_option(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    helptext = _run("gaze-search", "--help").stdout
    assert "--cache" in helptext and "--no-cache" in helptext and "--no-no" not in helptext
    store = sorted(data.stores.glob("*.zarr"))[0]
    _one_line(_run("gaze-search", store, "q", "--bundle", tiny_bundle, "--window", 102),
              "--window 102: must be a multiple of")
    _one_line(_run("gaze-search", store, "  ", "--bundle", tiny_bundle), "QUERY ' ': empty query")


def test_headline_command_finds_the_default_bundle(tiny_trained, tiny_bundle, tmp_path):
    data, _ = tiny_trained
    store = sorted(data.stores.glob("*.zarr"))[0]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    _one_line(_run("gaze-search", store, "where did I put the bulb", env=env),
              "gaze-export CHECKPOINT --default")
    installed = _run("gaze-export", tiny_bundle, "--default", env=env)
    assert installed.returncode == 0, installed.stderr
    default = tmp_path / "data" / "gazenlq" / "bundles" / "default"
    assert (default / "manifest.json").is_file()
    out = _run("gaze-search", store, "where did I put the bulb", "--explain", env=env)
    assert out.returncode == 0, out.stderr
    assert f"bundle: {default} (default)" in out.stdout and "rank" in out.stdout
    given = _run("gaze-search", store, "where did I put the bulb", "--explain", "--json",
                 env={**env, "GAZENLQ_BUNDLE": str(tiny_bundle)})
    doc = json.loads(given.stdout)
    assert doc["bundle"] == str(tiny_bundle) and doc["bundle_source"] == "$GAZENLQ_BUNDLE"


def test_a_search_served_by_its_index_never_imports_zarr(tiny_trained, tiny_bundle, tmp_path):
    """With the index present no feature is read, so Zarr (a fifth of a cold start) stays
    unimported; a search without it does read the features through Zarr."""
    data, _ = tiny_trained
    store = sorted(data.stores.glob("*.zarr"))[0]
    code = ("import sys; from gazenlq.engine import SearchEngine; "
            f"e = SearchEngine.from_bundle({str(tiny_bundle)!r}, cache_dir={str(tmp_path)!r}); "
            f"r = e.search({str(store)!r}, 'where did I put the bulb'); "
            "assert r[0].moments; print('zarr' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert runs == ["True", "False"]  # the first builds the index from the features


def test_engine_closes_as_a_context_manager(tiny_trained, tiny_bundle, tmp_path):
    """``with SearchEngine...`` releases the runtime at exit; a later call is one clear
    error, not a crash inside a released session."""
    from gazenlq.engine import SearchEngine
    from gazenlq.errors import GazeNLQError

    data, _ = tiny_trained
    store = sorted(data.stores.glob("*.zarr"))[0]
    with SearchEngine.from_bundle(tiny_bundle, cache_dir=str(tmp_path)) as engine:
        assert engine.search(store, "where did I put the bulb")[0].moments
    assert engine.runtime.sessions == {}
    with pytest.raises(GazeNLQError, match="closed"):
        engine.search(store, "where did I put the bulb")
    engine.close()  # idempotent
