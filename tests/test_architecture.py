"""The layout's rules, read from the source (docs/architecture.md explains them):

- no import circles among wrenpack/ and runtime_builder/ modules, counting
  imports inside function bodies (only ``if TYPE_CHECKING:`` blocks aside);
- no client module outside the backends and the CLI decides on a backend's
  name (the client asks a backend's ``capabilities``);
- what the worker ships (``wrenpack.worker.worker_files``) imports, when it
  is imported, only the standard library, cloudpickle, the AWS SDK and other
  shipped modules (an import inside a function serves a path that only the
  client or one declared feature takes, such as a runtime archive's zstandard).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wrenpack", "runtime_builder")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported name, line) of every import in the file outside TYPE_CHECKING
    blocks (``top_level_only``: not those inside functions either)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skipped.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import name``: a submodule if there is one, else the package itself
            out += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = _graph()
    cycles = _cycles(graph)
    detail = [
        ", ".join(f"{a} -> {b} (line {graph[a][b]})" for a in cycle for b in cycle if b in graph[a])
        for cycle in cycles
    ]
    assert not cycles, "import circles:\n" + "\n".join(detail)


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    # The check itself: a circle closed only inside a function body is found.
    graph = {"a": {"b": 1}, "b": {}}
    assert _cycles(graph) == []
    graph["b"]["a"] = 3
    assert _cycles(graph) == [["a", "b"]]
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from wrenpack import config\n")
    assert ("wrenpack.config", 2) in _imports("wrenpack.mod", src)


def _names_a_backend(node: ast.Compare) -> bool:
    """``x.backend == "lambda"``, ``backend != "local"``, ``name in ("local", "lambda")``..."""
    constants = set()
    for part in [node.left, *node.comparators]:
        for sub in ast.walk(part):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                constants.add(sub.value)
    return bool(constants & {"local", "lambda"}) and "backend" in ast.unparse(node).lower()


def test_no_client_module_branches_on_a_backend_name():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("wrenpack.") or name.startswith(("wrenpack.backends", "wrenpack.cli")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _names_a_backend(node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "decide from Backend.capabilities instead:\n" + "\n".join(offenders)


def test_the_backend_name_check_finds_a_branch():
    node = ast.parse('executor.config.backend != "local"').body[0].value
    assert _names_a_backend(node)
    assert not _names_a_backend(ast.parse('spec.get("type") == "local"').body[0].value)


def test_worker_side_modules_import_only_what_the_worker_ships():
    from wrenpack.worker import worker_files

    shipped = {"wrenpack." + f.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for f in worker_files()}
    shipped.add("wrenpack")
    allowed_third_party = {"cloudpickle", "boto3", "botocore"}
    modules = _modules()
    offenders = []
    for name in sorted(shipped):
        path = modules.get(name)
        if path is None:
            continue
        for target, line in _imports(name, path, top_level_only=True):
            top = target.split(".")[0]
            if top == "wrenpack":
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target not in shipped:
                    offenders.append(f"{name}:{line} imports {target}, which the worker does not ship")
            elif top not in sys.stdlib_module_names and top not in allowed_third_party and top != "__future__":
                offenders.append(f"{name}:{line} imports {target}")
    assert not offenders, "\n".join(offenders)


_SOURCES = ("wrenpack", "runtime_builder", "examples", "benchmarks")


def _source_files() -> list[Path]:
    return [p for top in _SOURCES for p in sorted((ROOT / top).rglob("*.py"))]


def test_every_docstring_is_text_that_encodes():
    """Python 3.13 encodes docstrings to UTF-8 when it compiles them: one holding a lone
    surrogate (a ``'\\udcff'`` written in a docstring that is not raw) makes the module
    fail to compile there, while 3.10 to 3.12 take it. wrenpack/storage/data.py had one,
    and on 3.13 every worker died at start (README's first command failed)."""
    bad = []
    for path in _source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                try:
                    (doc or "").encode("utf-8")
                except UnicodeEncodeError:
                    bad.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}")
    assert not bad, f"docstrings holding a lone surrogate (write it as '\\\\udcff'): {bad}"


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_the_sources_compile_on_each_python_the_project_supports(version):
    """pyproject says Python >= 3.10: each of the package's files (and the examples and
    benchmarks) compiles on each minor version this machine has, not only the running one."""
    from tests.aws import pythons
    from tests.aws.servers import Unavailable

    try:
        exe = pythons.interpreter(version)
    except Unavailable as exc:
        pytest.skip(str(exc))
    code = ("import sys\nbad = []\nfor p in sys.argv[1:]:\n    try:\n        compile(open(p, encoding='utf-8').read(), p, 'exec')\n"
            "    except Exception as e:\n        bad.append(f'{p}: {type(e).__name__}: {e}')\nprint('\\n'.join(bad))\n")
    out = subprocess.run([exe, "-c", code, *map(str, _source_files())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr[-2000:]
