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
        "import lightning_gpt.convert, lightning_gpt.checkpoint, lightning_gpt.seeding, lightning_gpt.batch\n"
        "import lightning_gpt.hf_io, lightning_gpt.init_from, lightning_gpt.serialization, lightning_gpt.data.cache\n"
        "from lightning_gpt.data import Tokenizer, build_tokenizer, tokenizer_from_state_dict\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# The layers, read off the folders: lightning_gpt/training/ (Lightning side) and lightning_gpt/cli/ (command line) may
# import Lightning; everything else is the model side or plain data and never does. The three compatibility paths
# (lightning_gpt.module, .strategies, .callbacks) only re-export the Lightning side.
COMPAT = {"lightning_gpt.module", "lightning_gpt.strategies", "lightning_gpt.callbacks"}
UPPER = ("lightning_gpt.training", "lightning_gpt.cli")
# ``from lightning_gpt.data import TextDataModule`` (the path of earlier versions) still works through a lazy module
# attribute that imports the Lightning side only when that name is asked for.
LAZY_COMPAT = {("lightning_gpt.data", "lightning_gpt.training.datamodule")}


def _third_party_imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_side_and_plain_data_never_import_lightning_or_the_layers_above():
    graph = import_graph()
    entry = {"lightning_gpt", "lightning_gpt.__main__"}  # the package root (lazy names) and `python -m` entry
    lower = [m for m in graph if not m.startswith(UPPER) and m not in COMPAT and m not in entry]
    assert "lightning_gpt.model" in lower and "lightning_gpt.data.tokenizers" in lower
    for name in lower:
        path = PACKAGE.parent.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        third = _third_party_imports(ast.parse(path.read_text()))
        assert not third & {"lightning", "pytorch_lightning", "torchmetrics"}, f"{name} imports Lightning"
        above = [m for m in graph[name] if (m.startswith(UPPER) or m in COMPAT) and (name, m) not in LAZY_COMPAT]
        assert not above, f"{name} (model side / plain data) imports {above}"


def test_the_public_import_paths_of_earlier_versions_keep_working():
    import lightning_gpt
    import lightning_gpt.callbacks
    import lightning_gpt.module
    import lightning_gpt.strategies
    from lightning_gpt.training import callbacks, module, strategies
    from lightning_gpt.training.datamodule import TextDataModule

    assert lightning_gpt.module is module and lightning_gpt.strategies is strategies
    assert lightning_gpt.GPTModule is module.GPTModule
    assert lightning_gpt.callbacks.SampleGeneration is callbacks.SampleGeneration
    assert lightning_gpt.callbacks.JSONLPredictionWriter is callbacks.JSONLPredictionWriter
    assert lightning_gpt.strategies.FSDP2Strategy is strategies.FSDP2Strategy
    from lightning_gpt.data import TextDataModule as old_path

    assert old_path is TextDataModule is lightning_gpt.TextDataModule
    from lightning_gpt import checkpoint, convert, generation

    assert callable(checkpoint.load_checkpoint) and callable(convert.from_hf_gpt2) and callable(generation.generate)
