"""The package's import structure, read from the source (every ``import`` statement, module level and inside
functions): layers import only downwards, ``sagnn_lightning.data`` has no import cycle, and no module imports
another module's private (``_name``) objects."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sagnn_lightning"

#: a layer may import itself and the layers after it in this list, never one before it
LAYERS = ("cli", "pretrained", "lit", "models", "nn", "kernels", "data")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path = PACKAGE) -> dict[str, list[tuple[str, list[str]]]]:
    """``module -> [(imported module, [imported names])]`` for imports of ``sagnn_lightning.*``."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted(root.rglob("*.py")):
        edges = found.setdefault(_module_name(path, root), [])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sagnn_lightning"):
                edges.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                edges += [(a.name, []) for a in node.names if a.name.startswith("sagnn_lightning")]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(imports: dict) -> list[str]:
    wrong = []
    for module, edges in imports.items():
        here = _layer(module)
        if here not in LAYERS:
            continue
        for target, _ in edges:
            there = _layer(target)
            if there in LAYERS and LAYERS.index(there) < LAYERS.index(here):
                wrong.append(f"{module} imports {target}")
    return wrong


def data_import_cycle(imports: dict) -> list[str] | None:
    graph = {
        m: {t for t, _ in edges if t.startswith("sagnn_lightning.data.") and t != m}
        for m, edges in imports.items()
        if m.startswith("sagnn_lightning.data.")
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt, [*path, node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def private_imports(imports: dict) -> list[str]:
    return [
        f"{module} imports {target}.{name}"
        for module, edges in imports.items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]


def test_layers_import_only_downwards():
    assert upward_imports(package_imports()) == []


def test_data_modules_have_no_import_cycle():
    cycle = data_import_cycle(package_imports())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_private_names_of_another():
    assert private_imports(package_imports()) == []


def test_the_checks_see_an_upward_import_a_cycle_and_a_private_import(tmp_path):
    """The checks above are not blind: planted violations are found."""
    fake = tmp_path / "sagnn_lightning"
    for folder in ("data", "nn"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from sagnn_lightning.data.b import _hidden\n")
    (fake / "data" / "b.py").write_text("def f():\n    from sagnn_lightning.data.a import thing\n")
    (fake / "nn" / "layer.py").write_text("from sagnn_lightning.lit.module import SAGNNModule\n")
    imports = package_imports(fake)
    assert upward_imports(imports) == ["sagnn_lightning.nn.layer imports sagnn_lightning.lit.module"]
    assert data_import_cycle(imports) == ["sagnn_lightning.data.a", "sagnn_lightning.data.b", "sagnn_lightning.data.a"]
    assert private_imports(imports) == ["sagnn_lightning.data.a imports sagnn_lightning.data.b._hidden"]


def test_readers_know_no_matbench():
    """The generic readers, the table and the fingerprints import nothing of matbench; matbench's layout and ids
    live in ``data/matbench_format.py`` and reach the readers only as a ``default_ids`` argument."""
    imports = package_imports()
    matbench = {"sagnn_lightning.data.matbench", "sagnn_lightning.data.matbench_format", "sagnn_lightning.data.tasks"}
    for module in ("sagnn_lightning.data.readers", "sagnn_lightning.data.table", "sagnn_lightning.data.fingerprint"):
        assert module in imports
        imported = {name for name, _ in imports[module]}
        assert not imported & matbench, (module, imported & matbench)
