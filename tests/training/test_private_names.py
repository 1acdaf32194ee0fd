"""Private names of Lightning, jsonargparse and torch are reached only through the internals modules.

The check reads the package's syntax trees. A private name is one that starts with ``_`` (not a dunder). It is the
package's own when the package defines it: a ``def``/``class`` of that name, or an assignment to ``self.<name>``
inside a class. Anything else that the package touches as ``x._name`` (or ``getattr(x, "_name")``), imports as
``from a import _name``, or imports from a private module (``from a._b import c``) belongs to another library. Outside
``INTERNALS`` that is allowed only for the libraries listed in ``OTHER_LIBRARIES`` (not Lightning, jsonargparse or
torch), each use named with its reason. An override of a third-party private method must be listed in
``_lightning_internals.OVERRIDDEN`` (its presence is tested in ``test_lightning_internals.py``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from lightning_gpt.training import _lightning_internals

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_gpt"
INTERNALS = ("training/_lightning_internals.py", "training/_torch_internals.py")
THIRD_PARTY = ("lightning", "pytorch_lightning", "lightning_fabric", "jsonargparse", "torch", "torchmetrics")

# Private names of other libraries (not Lightning, jsonargparse or torch) that the package reads on purpose.
OTHER_LIBRARIES = {
    "_pat_str": "tiktoken Encoding: the regex of a tiktoken twin of a byte-level BPE (data/tiktoken_tokenizer.py)",
    "_mergeable_ranks": "tiktoken Encoding: its merge ranks (data/tiktoken_tokenizer.py)",
    "_special_tokens": "tiktoken Encoding: its special tokens (data/tiktoken_tokenizer.py)",
    "_fingerprint": "datasets Dataset: the cache identity of a Hugging Face dataset (data/sources.py)",
    # The standard library's argparse.HelpFormatter, whose help layout cli/help_render.py records and replays (it also
    # overrides _format_usage, _format_action, _format_args, _expand_help, _format_action_invocation; keyed by the
    # Python version, and tests/cli/test_help_cache.py compares the replay with the live help).
    "_get_default_metavar_for_optional": "argparse HelpFormatter: an option's usage metavar (cli/help_render.py)",
    "_get_default_metavar_for_positional": "argparse HelpFormatter: a positional's usage metavar (cli/help_render.py)",
    "_iter_indented_subactions": "argparse HelpFormatter: an option's sub-actions, refused (cli/help_render.py)",
}
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}  # namedtuple's public API


def _is_private(name: str) -> bool:
    return (
        name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PUBLIC_UNDERSCORE
    )


def _files() -> dict[str, ast.AST]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def own_names(trees: dict[str, ast.AST]) -> set[str]:
    """Private names the package defines: functions and classes, names assigned in a class body or at module level,
    and ``self.<name> = ...`` (writing another object's private attribute defines nothing)."""
    names: set[str] = set()
    for tree in trees.values():
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
        for scope in scopes:  # module-level and class-level assignments and annotations
            for item in getattr(scope, "body", []):
                if isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
    return {n for n in names if _is_private(n)}


def foreign_private_uses(tree: ast.AST, own: set[str]) -> list[tuple[int, str, str]]:
    """``(line, name, how)`` for each private name of another library that ``tree`` touches."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            found.append((node.lineno, node.attr, f".{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append((node.lineno, node.args[1].value, f'{node.func.id}(..., "{node.args[1].value}")'))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if parts[0] == "lightning_gpt":
                continue
            private = [p for p in parts if _is_private(p)]
            if private:
                found.append((node.lineno, private[0], f"from {node.module} import ..."))
            found += [
                (node.lineno, a.name, f"from {node.module} import {a.name}") for a in node.names if _is_private(a.name)
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                private = [p for p in alias.name.split(".") if _is_private(p)]
                if alias.name.split(".")[0] != "lightning_gpt" and private:
                    found.append((node.lineno, private[0], f"import {alias.name}"))
    return sorted(found)


def test_no_private_third_party_name_outside_the_internals_modules():
    trees = _files()
    own = own_names(trees)
    offences = [
        f"lightning_gpt/{path}:{line}: {how}"
        for path, tree in trees.items()
        if path not in INTERNALS
        for line, name, how in foreign_private_uses(tree, own)
        if name not in OTHER_LIBRARIES
    ]
    assert not offences, (
        "private names of other libraries used outside training/_lightning_internals.py and "
        "training/_torch_internals.py (wrap each there, with a test):\n" + "\n".join(offences)
    )


def test_the_check_finds_what_it_should():
    code = (
        "import torch\n"
        "from lightning.pytorch.utilities.imports import _RICH_AVAILABLE\n"
        "from torch.distributed._composable import checkpoint\n"
        "torch._foreach_mul_(xs, 2)\n"
        "scaler._per_optimizer_states[0]\n"
        "getattr(module, '_trainer', None)\n"
        "self._ours = 1\n"
        "self._ours\n"
        "x.__class__\n"
        "point._replace(x=1)\n"
    )
    assert [how for _, _, how in foreign_private_uses(ast.parse(code), {"_ours"})] == [
        "from lightning.pytorch.utilities.imports import _RICH_AVAILABLE",
        "from torch.distributed._composable import ...",
        "._foreach_mul_",
        "._per_optimizer_states",
        'getattr(..., "_trainer")',
    ]


def test_own_names_are_read_from_definitions_and_self_assignments():
    tree = ast.parse("_K = 1\nclass A:\n    _x: int\n    def _m(self):\n        self._y = 1\n        other._z = 2\n")
    assert own_names({"a.py": tree}) == {"_K", "_x", "_m", "_y"}


def _subclasses_of_third_party() -> list[type]:
    classes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and any(b.__module__.split(".")[0] in THIRD_PARTY for b in cls.__mro__[1:]):
                classes.append(cls)
    return classes


@pytest.mark.parametrize("cls", _subclasses_of_third_party(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_overrides_of_private_methods_are_listed(cls):
    """A private method that a package class defines over a third-party base's is an override: it must be listed in
    ``OVERRIDDEN`` (whose presence in the installed versions is tested)."""
    listed = {name for names in _lightning_internals.OVERRIDDEN.values() for name in names}
    bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in THIRD_PARTY]
    for name, value in vars(cls).items():
        if _is_private(name) and callable(value) and any(hasattr(b, name) for b in bases):
            assert name in listed, f"{cls.__name__}.{name} overrides a private method: list it in OVERRIDDEN"
