"""kbench's layers: imports point one way (commands -> report -> engine -> models, tasks -> features, data -> core)
and no module imports itself back through others, whether at the top of a file or inside a function."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kbench

ROOT = Path(kbench.__file__).parent
REPO = ROOT.parent

# A module may import its own layer and the layers after it in this list; the top-level api and the package's
# __init__ sit above everything but the commands.
LAYERS = [
    ("kbench.commands", "kbench.__main__"),
    ("kbench.api",),
    ("kbench.report",),
    ("kbench.engine",),
    ("kbench.models", "kbench.tasks"),
    ("kbench.features", "kbench.metrics"),
    ("kbench.data",),
    ("kbench.core",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> set[str]:
    """Every ``kbench`` module ``path`` imports, anywhere in the file except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                base = name.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                module = ".".join([*base, module])
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "kbench"}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for m in imports(path, name):
            while m not in files and "." in m:  # a name imported from a module, not a module
                m = m.rsplit(".", 1)[0]
            if m in files and m != name and m != "kbench":
                targets.add(m)
        edges[name] = targets
    return edges


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS")


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down() -> None:
    upward = [
        f"{src} imports {dst}"
        for src, targets in graph().items()
        if src != "kbench"
        for dst in targets
        if layer(dst) < layer(src)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_baselines_use_the_public_model_api() -> None:
    allowed = ("kbench.models", "kbench.core")
    private = [
        f"{path.name} imports {m}"
        for path in sorted((REPO / "baselines").glob("*.py"))
        for m in imports(path, f"kbench.baselines.{path.stem}")
        if not m.startswith(allowed) or ".kaleido" in m
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("cyclic", [False, True])
def test_the_cycle_check_can_fail(tmp_path: Path, cyclic: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "kbench"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from kbench.core.b import x\n")
    (pkg / "core" / "b.py").write_text("def x():\n    from kbench.core import a\n" if cyclic else "x = 1\n")
    monkeypatch.setattr(f"{__name__}.ROOT", pkg)
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    if cyclic:
        with pytest.raises(AssertionError, match=r"kbench.core.a -> kbench.core.b -> kbench.core.a"):
            test_no_import_cycles()
    else:
        test_no_import_cycles()


def test_readme_layout_names_every_module() -> None:
    """The README's layout table lists each package of ``kbench/`` with all its modules, and nothing that is gone."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Layout") :]
    section = section[: section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `(kbench/[\w/]+/)` \| (.*) \|$", section, re.M))
    packages = {f"{p.parent.relative_to(REPO)}/" for p in ROOT.rglob("__init__.py")} - {"kbench/"}
    assert set(rows) == packages, (
        f"packages without a row: {packages - set(rows)}; rows of no package: {set(rows) - packages}"
    )
    for package, text in rows.items():
        listed = set(re.findall(r"`([a-z_0-9]+)`", text))  # module names; classes are CamelCase
        modules = {p.stem for p in (REPO / package).glob("*.py") if p.stem != "__init__"}
        assert listed == modules, f"{package}: unlisted {sorted(modules - listed)}, gone {sorted(listed - modules)}"
