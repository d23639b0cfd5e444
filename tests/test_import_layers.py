"""The layers of ARCHITECTURE.md hold: every import inside imagen_jax (function-level ones too) points down the layer
list, so there is no import cycle, and models/ imports only jax/flax/optax, attention.py, diffusion/, text/ and
itself."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "imagen_jax"

# Lowest first: a module may import its own layer's modules and those of the layers below it, never above.
LAYERS = (
    (
        "imagen_jax.errors",
        "imagen_jax.attention",
        "imagen_jax.activation_sharding",
        "imagen_jax.parallel",
        "imagen_jax.topology",
        "imagen_jax.config_files",
        "imagen_jax.data",
        "imagen_jax.diffusion",
        "imagen_jax.workdir_lock",
    ),
    ("imagen_jax.text",),
    ("imagen_jax.models",),
    ("imagen_jax.evaluation", "imagen_jax.training", "imagen_jax.editing"),
    ("imagen_jax.workdir", "imagen_jax.checks"),
    ("imagen_jax.experiment",),
    ("imagen_jax.sample", "imagen_jax.rerank"),
    ("imagen_jax.cascade",),
    ("imagen_jax.modes",),
    ("imagen_jax.main",),
)
MODELS_MAY_IMPORT = (
    "imagen_jax.models",
    "imagen_jax.attention",
    "imagen_jax.activation_sharding",
    "imagen_jax.diffusion",
    "imagen_jax.text",
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The imagen_jax modules `path` imports anywhere in its body (`from a import b` counts a.b when that is a
    module, else a), except under `if TYPE_CHECKING:` (annotations only, never imported at run time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        ):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name == "imagen_jax" or name.startswith("imagen_jax.")}


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where ARCHITECTURE.md puts it")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_import_points_down_the_layers(graph):
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in graph.items()
        if module != "imagen_jax"
        for target in sorted(targets)
        if target != "imagen_jax" and _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_models_import_only_models_diffusion_and_text(graph):
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("imagen_jax.models")
        for target in sorted(targets)
        if not target.startswith(MODELS_MAY_IMPORT)
    ]
    assert not wrong, "\n".join(wrong)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_there_is_no_import_cycle(graph):
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_walker_sees_function_level_imports_and_would_flag_a_cycle(tmp_path):
    """The checks above could pass by seeing nothing: the walker must find an import inside a function body, the
    cycle search must report a planted cycle, and the layers must rank models below training."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import imagen_jax.main\n"
        "def f():\n    from imagen_jax.training import trainer\n    import imagen_jax.sample\n"
    )
    found = _imports(source, _modules())
    assert found == {"imagen_jax.training.trainer", "imagen_jax.sample"}
    assert _layer("imagen_jax.models.unet") < _layer("imagen_jax.training.trainer")
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
