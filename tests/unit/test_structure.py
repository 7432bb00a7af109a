"""The code's layering, checked from the source: no import cycle among our modules (imports at the
top and inside functions alike), gpo_core a library without CLI libraries, every import path a
real folder path, and every package found by the build."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each top-level package and the folder that holds it: the import path is the folder path.
PACKAGES = {"gpo_core": ROOT, "gpo_services": ROOT / "services", "gpo_client": ROOT / "clients"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, base in PACKAGES.items():
        for path in sorted((base / package).rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Our modules that ``name`` imports anywhere in its source (``from a import b`` counts as an
    import of the module a.b when that is a module, else of a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_walk_sees_imports_inside_functions() -> None:
    # gpo_client.cli.runs imports the training launcher only inside `gpo train`.
    assert "gpo_core.train.launch" in GRAPH["gpo_client.cli.runs"]
    assert "gpo_core.models" in GRAPH["gpo_core.generate"]


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_planted_cycle_of_the_past_would_be_found() -> None:
    """generate -> train.loop -> train.sampling -> generate held once; the walk must see such a loop."""
    GRAPH["gpo_core.generate"].add("gpo_core.train.loop")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["gpo_core.generate"].discard("gpo_core.train.loop")


def test_dependencies_point_one_way() -> None:
    """gpo_core imports nothing of ours; services do not import the client."""
    for module, targets in GRAPH.items():
        if module.startswith("gpo_core"):
            assert all(t.startswith("gpo_core") for t in targets), (module, targets)
        if module.startswith("gpo_services"):
            assert not any(t.startswith("gpo_client") for t in targets), (module, targets)


@pytest.mark.parametrize("library", ["typer", "rich", "click"])
def test_gpo_core_is_a_library_without_cli_libraries(library: str) -> None:
    for name, path in MODULES.items():
        if not name.startswith("gpo_core"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert library not in imported, f"{path.relative_to(ROOT)} imports {library}"


def test_every_import_path_is_the_folder_path() -> None:
    import importlib

    for package, base in PACKAGES.items():
        module = importlib.import_module(package)
        assert Path(module.__file__).resolve() == (base / package / "__init__.py").resolve()


def test_every_package_folder_is_a_regular_package() -> None:
    """setuptools' package finder skips folders without __init__.py: they would be missing from a
    non-editable install (the container image)."""
    folders = {path.parent for path in MODULES.values()}
    missing = [str(f.relative_to(ROOT)) for f in sorted(folders) if not (f / "__init__.py").exists()]
    assert not missing


@pytest.mark.parametrize(
    "module",
    ["gpo_services.common.settings", "gpo_core.judging.settings", "gpo_core.errors", "gpo_client.cli.main"],
)
def test_settings_errors_and_the_cli_load_without_torch(module: str) -> None:
    """The services read their settings, and ``gpo --help`` starts, without importing torch (seconds
    and hundreds of MB each time)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "False"


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md's module map stays true to the code: every module is named there (by
    its file name, as the map writes it)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(path.relative_to(ROOT)) for name, path in MODULES.items()
               if path.name != "__init__.py" and path.name != "__main__.py" and f"`{path.name}`" not in text
               and f"{path.stem}.py" not in text]  # fmt: skip
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
