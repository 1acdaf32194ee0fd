"""The package's import graph: no cycles, and the model side imports without Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_gpt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, this: str, is_package: bool, modules: set[str]) -> set[str]:
    """``lightning_gpt`` modules imported anywhere in ``tree`` (inside functions too: a lazy import inside a function
    is still a dependency), except under ``if TYPE_CHECKING:`` (never executed)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = this.split(".") if is_package else this.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != this}


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert "lightning_gpt.config" in graph and "lightning_gpt.attention.base" in graph
    assert find_cycle(graph) == [], "import cycle: " + " -> ".join(find_cycle(graph))


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("lightning_gpt.config", "lightning_gpt.attention"),
        ("lightning_gpt.training.callbacks.throughput", "lightning_gpt.training.module"),
        ("lightning_gpt.data.tiktoken_tokenizer", "lightning_gpt.data.tokenizers"),
    ],
)
def test_the_three_former_cycles_point_one_way(lower, upper):
    graph = import_graph()
    assert upper not in graph[lower], f"{lower} imports {upper}"


def test_model_side_imports_without_lightning():
    code = (
        "import sys\n"
        "import lightning_gpt.config, lightning_gpt.model, lightning_gpt.attention, lightning_gpt.generation\n"
        "import lightning_gpt.io, lightning_gpt.io.convert, lightning_gpt.io.checkpoint, lightning_gpt.io.hf\n"
        "import lightning_gpt.io.init_from, lightning_gpt.io.serialization, lightning_gpt.data.cache\n"
        "import lightning_gpt.seeding, lightning_gpt.batch\n"
        "from lightning_gpt.data import Tokenizer, build_tokenizer, tokenizer_from_state_dict\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# The layers, lowest first, read off the folders (``../shared/docs/DESIGN.md``): a module imports only from its own
# layer or the ones below, lazy imports inside functions included. Lightning is imported only by the two top layers.
LAYERS = (
    (
        "model side",
        (
            "lightning_gpt.config",
            "lightning_gpt.model",
            "lightning_gpt.attention",
            "lightning_gpt.generation",
            "lightning_gpt.seeding",
            "lightning_gpt.batch",
            "lightning_gpt.errors",
            "lightning_gpt.jsonfile",
        ),
    ),
    ("data", ("lightning_gpt.data",)),
    ("io", ("lightning_gpt.io",)),
    ("serving and evaluation", ("lightning_gpt.serve", "lightning_gpt.evaluation")),
    ("training", ("lightning_gpt.training",)),
    ("cli", ("lightning_gpt.cli",)),
)
LIGHTNING_LAYERS = ("training", "cli")
ENTRY = {"lightning_gpt", "lightning_gpt.__main__"}  # the package root (lazy names) and the `python -m` entry


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_imports.py")


def _third_party_imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_belongs_to_a_layer_and_imports_only_downward():
    graph = import_graph()
    upward = []
    for name, targets in graph.items():
        if name in ENTRY:
            continue
        here = _layer(name)
        upward += [f"{name} -> {t}" for t in sorted(targets) if t not in ENTRY and _layer(t) > here]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_only_the_lightning_layers_import_lightning():
    graph = import_graph()
    for name in graph:
        if name in ENTRY or LAYERS[_layer(name)][0] in LIGHTNING_LAYERS:
            continue
        path = PACKAGE.parent.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        third = _third_party_imports(ast.parse(path.read_text()))
        assert not third & {"lightning", "pytorch_lightning", "torchmetrics"}, f"{name} imports Lightning"


def test_the_public_import_paths():
    import lightning_gpt
    from lightning_gpt.io import checkpoint, convert
    from lightning_gpt.training import GPTModule, TextDataModule, callbacks, strategies

    assert lightning_gpt.GPTModule is GPTModule and lightning_gpt.TextDataModule is TextDataModule
    assert callbacks.SampleGeneration and strategies.FSDP2Strategy
    assert callable(checkpoint.load_checkpoint) and callable(convert.from_hf_gpt2)
    for old in ("lightning_gpt.module", "lightning_gpt.strategies", "lightning_gpt.callbacks", "lightning_gpt.hf_io"):
        with pytest.raises(ImportError):  # removed in 0.2 (CHANGELOG.md names the new paths)
            __import__(old)
