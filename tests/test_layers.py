"""Layers point one way (docs/architecture.md, "Layers"): a module imports only from its own layer or below,
and the driver and the front ends know a model family only through its contract."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "framecast"

# bottom to top; a module may import from its own layer and the layers below it
LAYERS: list[set[str]] = [
    {"errors"},
    {"sampling", "io", "world"},  # pure functions, video files, the procedural world (no models)
    {"models"},  # networks: the DiT, autoencoders, text encoders
    {"stream"},  # per-stream state and scheduling
    {"v2v"},  # inputs: video-to-video sources and feeds
    {"family"},  # model families behind the contract
    {"engine"},  # the driver and the live stream
    {"pipeline", "recipes", "planner", "planner_model"},  # loading, recipes, memory planning
    {"cli", "server", "bench", "evaluation", "train", "__main__"},  # front ends
]
# what the driver and the front ends may import from a family: its contract (and the pipeline builds families)
CONTRACT_ONLY = {"engine", "server", "bench", "evaluation", "cli"}
FAMILY_INSIDES = ("framecast.family.causal", "framecast.family.denoiser", "framecast.stream.scheduler")


def _layer(part: str) -> int:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"framecast.{part} is in no layer: add it to LAYERS in {__file__}")


def _part(module: str) -> str:
    """framecast.stream.state -> stream; framecast.pipeline -> pipeline."""
    return module.split(".")[1]


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every framecast import in a file, wherever it stands (functions, TYPE_CHECKING)."""
    tree, found = ast.parse(path.read_text()), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("framecast"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("framecast.")]
    return found


def _sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"]  # the face re-exports


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = []
    for path in _sources():
        here = _module(path)
        for line, target in _imports(path):
            if target == "framecast":
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports the package face")
            elif _layer(_part(target)) > _layer(_part(here)):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({_part(here)}) imports {target}")
    assert not wrong, "imports that run back up the layers:\n" + "\n".join(wrong)


def test_driver_and_front_ends_know_families_only_by_their_contract() -> None:
    wrong = []
    for path in _sources():
        if _part(_module(path)) not in CONTRACT_ONLY:
            continue
        for line, target in _imports(path):
            if target.startswith(FAMILY_INSIDES):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not wrong, "reaching past the model-family contract:\n" + "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check is not vacuous: an import of the driver from the stream layer is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from framecast.engine.driver import Driver\n")
    [(line, target)] = _imports(bad)
    assert line == 2 and _layer(_part(target)) > _layer("stream")
    assert all(_part(_module(p)) for p in _sources())
