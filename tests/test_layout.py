"""The package layout shows the architecture: no import cycles, no oversized modules,
argparse only in each stage's cli.py (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "scorebridge"
MAX_LINES = 420  # "about 400"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every scorebridge module `name` imports (top level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("scorebridge"):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("scorebridge"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in modules else mod)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle of design
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_about_400_lines():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    big = {n: k for n, k in big.items() if k > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_argparse_only_in_cli_modules():
    bad = [
        str(p.relative_to(SRC))
        for p in PKG.rglob("*.py")
        if p.name != "cli.py" and "argparse" in p.read_text() and p.parent != PKG
    ]
    assert not bad, f"argparse outside a stage's cli.py: {bad}"


def test_the_layout_of_the_architecture_page():
    for sub in ("core", "data/era5", "data/igra", "data/cells", "sr", "bridge", "tracking", "schemas"):
        assert (PKG / sub).is_dir(), sub
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    for sub in ("core", "data/era5", "data/igra", "data/cells", "sr", "bridge", "tracking"):
        assert sub in doc, f"docs/ARCHITECTURE.md does not mention {sub}"


def test_ruff_lint_and_format_are_clean():
    """`make lint`'s ruff checks: pyflakes/pycodestyle/import order, and the formatter."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    root = SRC.parent
    paths = ["src", "tests", "benchmarks"]
    lint = subprocess.run([ruff, "check", *paths], cwd=root, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = subprocess.run([ruff, "format", "--check", *paths], cwd=root, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout[-3000:]
