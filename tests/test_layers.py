"""The package's layers: the tree shows the flow, and imports only run down it.

    0  settings, events (and the package root)   configuration and the event vocabulary
    1  vision                                    pixels and models
    2  identity                                  who is known
    3  live                                      the gate at work
    4  server, cli                               the ways in

A module may import its own layer or a lower one, never a higher one. Every `facegate` import
counts wherever it is written: at the top, inside a function, under `if TYPE_CHECKING:` (a
type-only import still ties the lower module to the higher one's API; a lower layer that needs
such a type declares a Protocol of its own), relative or absolute, and a constant
`importlib.import_module("facegate...")`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "facegate"

TOP = {"facegate": 0, "facegate.settings": 0, "facegate.events": 0}
SUBPACKAGES = {"vision": 1, "identity": 2, "live": 3, "server": 4, "cli": 4}
NAMES = {0: "top level", 1: "vision", 2: "identity", 3: "live", 4: "server/cli"}


class Edge(msgspec.Struct, frozen=True):
    module: str
    target: str
    line: int


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    """The layer of a module or package, None for one that has no place (yet)."""
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "facegate":
        return SUBPACKAGES.get(parts[1])
    return None


def dynamic_import(node: ast.AST) -> str | None:
    """The module of `importlib.import_module("...")` or `__import__("...")` with a constant."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    arg = node.args[0]
    if name in {"import_module", "__import__"} and isinstance(arg, ast.Constant):
        return arg.value if isinstance(arg.value, str) else None
    return None


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[Edge]:
    """Every `facegate` module or package `module` imports, with the line it does it on."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Edge] = []

    def add(target: str, line: int) -> None:
        if target == "facegate" or target.startswith("facegate."):
            found.append(Edge(module, target, line))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                # `from facegate.vision import face` imports the module facegate.vision.face;
                # `from facegate import __version__` imports from the package itself.
                sub = f"{origin}.{alias.name}"
                add(sub if sub in known else origin, node.lineno)
        elif (target := dynamic_import(node)) is not None:
            add(target, node.lineno)
    return sorted(found, key=lambda edge: edge.line)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def graph() -> list[Edge]:
    found = modules()
    known = set(found)
    edges: list[Edge] = []
    for name, path in found.items():
        edges += imports(path.read_text(), name, path.name == "__init__.py", known)
    return edges


def describe(level: int | None) -> str:
    return "no layer" if level is None else NAMES[level]


def violations(edges: list[Edge]) -> list[str]:
    out = []
    for edge in edges:
        mine, theirs = layer(edge.module), layer(edge.target)
        if mine is None or theirs is None or theirs > mine:
            out.append(
                f"{edge.module} ({describe(mine)}) imports {edge.target} ({describe(theirs)})"
                f" at line {edge.line}"
            )
    return out


def test_every_module_has_a_layer() -> None:
    homeless = [name for name in modules() if layer(name) is None]
    assert not homeless, (
        f"modules outside the layers: {homeless}; put each in vision/, identity/, live/, "
        "server/ or cli/ (or, for a new foundation like settings, add it to TOP deliberately)"
    )


def test_each_subpackage_is_a_package() -> None:
    for sub in SUBPACKAGES:
        assert (PACKAGE / sub / "__init__.py").is_file(), sub


def test_imports_only_run_down_the_layers() -> None:
    edges = graph()
    # Not vacuous: the walk sees the package's real wiring, in every direction allowed.
    assert len(edges) > 150
    seen = {(layer(e.module), layer(e.target)) for e in edges}
    assert {(1, 0), (2, 1), (3, 1), (3, 2), (4, 3), (4, 2)} <= seen
    bad = violations(edges)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


KNOWN = {"facegate", "facegate.vision.face", "facegate.live.engine", "facegate.live.bus"}

UPWARD = """
from __future__ import annotations
from typing import TYPE_CHECKING
import numpy
from facegate.vision.face import Face
if TYPE_CHECKING:
    from facegate.live.engine import Engine
def later():
    import facegate.live.engine
    from facegate.live import engine
    from ..live import bus
    from .. import __version__
    importlib.import_module("facegate.live.bus")
"""


def test_the_walk_finds_every_kind_of_import() -> None:
    edges = imports(UPWARD, "facegate.vision.face", is_package=False, known=KNOWN)
    assert [(e.target, e.line) for e in edges] == [
        ("facegate.vision.face", 5),
        ("facegate.live.engine", 7),  # under TYPE_CHECKING
        ("facegate.live.engine", 9),  # inside a function
        ("facegate.live.engine", 10),  # from a package import a module
        ("facegate.live.bus", 11),  # relative
        ("facegate", 12),  # relative, from the package root
        ("facegate.live.bus", 13),  # importlib
    ]
    bad = violations(edges)
    assert len(bad) == 5
    assert bad[0] == "facegate.vision.face (vision) imports facegate.live.engine (live) at line 7"


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("facegate.vision.face", "facegate.settings", True),
        ("facegate.vision.face", "facegate.identity.store", False),
        ("facegate.identity.gallery", "facegate.vision.face", True),
        ("facegate.live.engine", "facegate.identity.gallery", True),
        ("facegate.live.engine", "facegate.server.hub", False),
        ("facegate.server.api", "facegate.cli.common", True),
        ("facegate.events", "facegate.vision.face", False),
        ("facegate.settings", "facegate", True),
    ],
)
def test_the_rule(module: str, target: str, allowed: bool) -> None:
    assert (not violations([Edge(module, target, 1)])) is allowed
