"""The house rules of docs/architecture.md, checked on the source (the AST) rather than hoped for.

- Imports point down the layers: each part of ``captioner/`` imports only what its row of the table allows
  (function-level imports included: a lazy import does not hide a dependency).
- Nothing outside ``cli/`` and ``__main__.py`` imports ``captioner.cli``; no module imports another module's
  ``_private`` name or reads one through an imported module.
- No import circles between modules.
- No module over 400 lines, no function over 50.
- Every command-line option named after a configuration field takes its default from that dataclass (``train``'s
  architecture options from ``recipe_model_config()``, ``ModelConfig`` with the shipped default's recipe).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "captioner"
BASE = {"config", "vocab", "images", "image_inputs", "fileio", "devices", "version", "arrays", "runlog"}
# part of captioner -> the parts it may import (besides itself); the layers of docs/architecture.md
ALLOWED = {
    **{name: set() for name in BASE},
    "image_inputs": {"images"},  # what the Python API accepts, through the CLI's loader
    "metrics": {"vocab"},  # the tokenizer of nltk BLEU; never torch or a model
    "download": set(),
    "data": BASE,
    "models": BASE,
    "generation": BASE | {"models"},
    "captions": BASE | {"generation"},
    "captioning": BASE | {"models", "generation", "captions"},  # what both backends share, without torch
    "pipeline": BASE | {"models", "generation", "captions", "captioning"},
    "features": BASE | {"models", "generation", "pipeline", "data"},
    "evaluate": BASE | {"models", "generation", "pipeline", "data", "metrics", "features"},
    "combine": BASE | {"models", "pipeline"},
    "training": BASE | {"models", "generation", "pipeline", "data", "metrics", "features", "evaluate", "combine"},
    "export": BASE | {"models", "generation", "captioning", "pipeline", "data", "features"},
    "serving": BASE | {"models", "generation", "pipeline", "data", "export"},
    "inspection": BASE | {"models", "generation", "pipeline", "data", "features"},
    "library": BASE | {"models", "generation", "pipeline"},
    "cli": None,  # anything
    "__main__": {"cli"},
    "train": set(),  # the torchrun shim runs ``python -m captioner`` by name
    "__init__": {"version", "pipeline", "generation", "config"},  # the package's lazy public names
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = modules()


def part_of(module: str) -> str:
    """``captioner.models.encoders`` -> ``models``; ``captioner`` (the package) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every ``captioner`` import in a file, at any depth: ``(line, module, names imported from it)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "captioner":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "captioner"]
    return found


def targets(module: str, names: list[str]) -> list[str]:
    """The modules an import names: each name that is a submodule (``from captioner.cli import caption``), and
    the module itself when it also gives other names (a function, a class, a constant)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs if names and len(subs) == len(names) else [module, *subs]


def test_parts_import_only_the_layers_below_them():
    wrong = []
    for module, path in MODULES.items():
        allowed = ALLOWED.get(part_of(module), "unknown")
        assert allowed != "unknown", f"{module}: add its part to ALLOWED and to docs/architecture.md"
        for line, target, names in imports(path):
            for reached in targets(target, names):
                other = part_of(reached)
                if allowed is not None and other != part_of(module) and other not in allowed:
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports {reached}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_nothing_but_the_cli_imports_the_cli():
    wrong = [f"{path}:{line}" for module, path in MODULES.items() for line, target, _ in imports(path)
             if target.startswith("captioner.cli") and part_of(module) not in ("cli", "__main__")]
    assert not wrong


def test_no_module_uses_another_modules_private_names():
    wrong = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("captioner"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and node.module != module:
                        wrong.append(f"{path}:{node.lineno} imports {node.module}.{a.name}")
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("captioner")})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{path}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (the package's own lazy facade, ``captioner/__init__``, left out)."""
    graph = {}
    for module, path in MODULES.items():
        if module == "captioner":
            continue
        reached = {t for _, target, names in imports(path) for t in targets(target, names)}
        graph[module] = {t for t in reached if t in MODULES and t not in ("captioner", module)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_there_are_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path}:{node.lineno} {node.name}: {length} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def _subparsers():
    from captioner.cli.main import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", ["train", "finetune", "caption", "evaluate", "visualize"])
def test_every_cli_default_is_its_dataclass_default(command):
    from captioner.config import ModelConfig
    from captioner.generation import GenerationConfig
    from captioner.training.config import FinetuneConfig, TrainConfig, finetune_defaults, recipe_model_config

    # train's architecture options take their defaults from the recipe (ModelConfig with RECIPE_MODEL's fields):
    # ModelConfig's own defaults are what old config.json files are read with
    sources = [TrainConfig() if command == "train" else finetune_defaults(),
               recipe_model_config() if command == "train" else ModelConfig(), GenerationConfig(), FinetuneConfig()]
    if command not in ("train", "finetune"):
        sources = [GenerationConfig()]
    checked = 0
    for action in _subparsers()[command]._actions:
        source = next((s for s in sources if action.dest in {f.name for f in dataclasses.fields(s)}), None)
        if source is None or action.required:
            continue
        assert action.default == getattr(source, action.dest), f"{command} --{action.dest}"
        checked += 1
    assert checked >= (40 if command in ("train", "finetune") else 3)


def test_the_options_build_the_configs_they_describe():
    from captioner.cli.main import build_parser
    from captioner.cli.train import train_config
    from captioner.training.config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--threads", "2", "--freeze",
                                      "embedding,head", "--val-split", "none", "--lr", "0.01"])
    cfg = train_config(args)
    assert (cfg.num_threads, cfg.freeze, cfg.val_split, cfg.lr) == (2, ["embedding", "head"], None, 0.01)
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in (
        "data", "out", "num_threads", "freeze", "val_split", "lr", "command")} == {
        f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig) if f.name not in (
            "data", "out", "num_threads", "freeze", "val_split", "lr", "command")}
