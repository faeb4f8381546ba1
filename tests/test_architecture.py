"""The package's shape: no import cycles, helpers defined once, one vocabulary of string choices."""

from __future__ import annotations

import ast
import importlib
import inspect
import zlib
from pathlib import Path

import numpy as np
import pytest

import lit_advgame

PACKAGE_DIR = Path(lit_advgame.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


# --------------------------------------------------------------------------- the import graph
def package_modules(root: Path = PACKAGE_DIR) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: str, is_package: bool, node: ast.AST, modules: dict) -> list[str]:
    """The package modules an import statement (or an ``importlib.import_module("...")`` call) loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        source = _resolve_from(module, is_package, node)
        # ``from pkg import submodule`` depends on the submodule; ``from pkg import name`` on pkg itself
        targets = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
        if len(targets) < len(node.names):
            targets.append(source)
        return targets
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            return [str(node.args[0].value)]
    return []


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line of the first such import}, counting module-level,
    function-level (deferred) and ``TYPE_CHECKING`` imports alike."""
    modules = package_modules(root)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for target in _imported(name, is_package, node, modules):
                if target in modules and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One concrete cycle ``[a, b, ..., a]`` per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # iterative Tarjan (no recursion limit on deep graphs)
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child in component and child not in parents and child != start:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return sorted(component)


def describe_cycle(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    modules = package_modules()
    steps = [
        f"{a} -> {b} ({modules[a][0].relative_to(PACKAGE_DIR.parent)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])
    ]
    return "import cycle: " + " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_cycle_finder_reports_a_cycle_with_its_lines(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")  # a deferred, relative import
    (package / "c.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    (package / "sub" / "d.py").write_text("from ..a import thing\nfrom pkg import sub\n")
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.c": 2} and graph["pkg.sub.d"] == {"pkg.a": 1, "pkg.sub": 2}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert find_cycles({"x": {"y": 1}, "y": {}}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "lit_advgame.models.registry" in graph
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(describe_cycle(graph, cycle) for cycle in cycles)


def test_leaf_modules_import_nothing_from_the_package():
    graph = import_graph()
    for leaf in ("lit_advgame.vocabulary", "lit_advgame.models.catalog", "lit_advgame.evaluation.results"):
        assert graph[leaf] == {}, f"{leaf} should be a leaf of the import graph; it imports {sorted(graph[leaf])}"


# --------------------------------------------------------------------------- helpers defined once
#: definitions of the canonical helpers outside lit_advgame/utils that still await their switch to the
#: utils version (call sites owned by other parts of the code); remove an entry when it is switched
PENDING_DUPLICATES: set[tuple[str, str]] = set()
HELPERS = {"eval_mode", "_eval_mode", "make_generator", "derive_seed"}


def test_helpers_are_defined_once_in_utils():
    from lit_advgame.attacks import model_mode, seeding
    from lit_advgame.utils import modes
    from lit_advgame.utils import seeding as utils_seeding

    assert model_mode.eval_mode is modes.eval_mode
    for name in ("derive_seed", "make_generator", "draw_base_seed"):
        assert getattr(seeding, name) is getattr(utils_seeding, name)
    elsewhere = set()
    for name, (path, _) in package_modules().items():
        if name.startswith("lit_advgame.utils."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in HELPERS:
                elsewhere.add((node.name, name))
    assert elsewhere == PENDING_DUPLICATES, (
        f"helpers defined outside lit_advgame/utils: {sorted(elsewhere - PENDING_DUPLICATES)} are new "
        f"(use lit_advgame.utils.modes / lit_advgame.utils.seeding); {sorted(PENDING_DUPLICATES - elsewhere)} "
        "were switched: remove them from PENDING_DUPLICATES"
    )


def test_canonical_derive_seed_reproduces_the_attack_streams():
    from lit_advgame.utils.seeding import derive_seed, make_generator

    # the attacks' historical derive_seed(base_seed, name), written out: attack results do not change
    def historical(base_seed: int, name: str) -> int:
        entropy = [int(base_seed) % (1 << 64), zlib.crc32(name.encode("utf-8"))]
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)

    for base_seed, name in [(0, "random_start"), (7, "VarianceReduction#0"), (123456789, "batch:40")]:
        assert derive_seed(base_seed, name) == historical(base_seed, name)
    assert derive_seed(0, "random_start") != derive_seed(1, "random_start")
    assert derive_seed(2**64 + 5, "batch:3") == derive_seed(5, "batch:3")  # the base seed is taken mod 2**64
    assert make_generator(3, "x").initial_seed() == derive_seed(3, "x")
    with pytest.raises(ValueError, match="needs an integer seed"):
        make_generator(None, "x")


# --------------------------------------------------------------------------- one vocabulary
def _tuple(module: str, name: str):
    return getattr(importlib.import_module(module), name)


#: (vocabulary tuple, module, its tuple or mapping of allowed names): the names agree (order aside)
VOCABULARY_SOURCES = [
    ("SPLITS", "lit_advgame.data.base", "SPLITS"),
    ("DATAMODULE_NAMES", "lit_advgame.data", "DATAMODULES"),
    ("NORMS", "lit_advgame.attacks.norms", "NORMS"),
    ("NORMS", "lit_advgame.attacks.pgd_settings", "NORM_NAMES"),
    ("LOSSES", "lit_advgame.attacks.losses", "LOSSES"),
    ("RADIUS_SCALINGS", "lit_advgame.attacks.base", "SCALINGS"),
    ("UNITS", "lit_advgame.attacks.base", "UNITS"),
    ("RECORD_FORMATS", "lit_advgame.attacks.base", "RECORD_FORMATS"),
    ("ATTACK_PRESETS", "lit_advgame.attacks.presets", "PRESETS"),
    ("RECORD_MODES", "lit_advgame.predict.attack_module", "RECORD_MODES"),
    ("AUTOCAST_MODES", "lit_advgame.utils.precision", "AUTOCAST_MODES"),
    ("VALUE_NAMES", "lit_advgame.interactions.values", "VALUE_NAMES"),
    ("BASELINE_NAMES", "lit_advgame.interactions.baselines", "BASELINE_NAMES"),
    ("ORDER_PRESETS", "lit_advgame.interactions.orders", "ORDER_PRESETS"),
    ("PAIR_KINDS", "lit_advgame.interactions.sampling", "PAIR_KINDS"),
    ("PAIR_KINDS", "lit_advgame.callbacks.game_settings", "PAIR_KINDS"),
    ("PERTURBATION_FORMS", "lit_advgame.interactions.perturbation", "FORMS"),
    ("INTERACTION_SCALES", "lit_advgame.interactions.perturbation", "SCALES"),
    ("ADVERSARIAL_METHODS", "lit_advgame.training.adversarial", "METHODS"),
    ("TRADES_STARTS", "lit_advgame.training.adversarial", "TRADES_STARTS"),
    ("PREDICT_METHODS", "lit_advgame.training.smoothing", "PREDICT_METHODS"),
    ("REGULARIZER_NAMES", "lit_advgame.ensembles.registry", "REGULARIZERS"),
    ("REGULARIZER_SCALINGS", "lit_advgame.ensembles.base", "SCALINGS"),
    ("ENSEMBLE_ADV_LOSSES", "lit_advgame.training.ensemble", "ADV_LOSSES"),
    ("TRS_VARIANTS", "lit_advgame.ensembles.trs", "VARIANTS"),
    ("BATCHNORM_MODES", "lit_advgame.ensembles.trs", "BN_MODES"),
    ("TRANSFER_SUBSETS", "lit_advgame.evaluation.transfer", "SUBSETS"),
    ("ROBUSTNESS_ATTACKS", "lit_advgame.evaluation.robustness", "ROBUSTNESS_ATTACKS"),
    ("AUTOATTACK_VERSIONS", "lit_advgame.evaluation.robustness", "AUTOATTACK_COMPONENTS"),
    ("DETECTOR_KINDS", "lit_advgame.defenses.detection", "DETECTOR_KINDS"),
    ("DETECTOR_STATISTICS", "lit_advgame.defenses.detection", "DETECTOR_STATISTICS"),
    ("SINGLETON_REWARDS", "lit_advgame.attributions.pixel_interactions", "SINGLETON_REWARDS"),
    ("REWARD_ESTIMATORS", "lit_advgame.attributions.pixel_interactions", "REWARD_ESTIMATORS"),
    ("TAYLOR_RULES", "lit_advgame.attributions.pixel_interactions", "TAYLOR_RULES"),
    ("SINGLETON_REWARDS", "lit_advgame.attributions.components", "SINGLETON_REWARDS"),
    ("RECOVERY_SUBSETS", "lit_advgame.defenses.recovery", "RECOVERY_SUBSETS"),
    ("RANK_ROUNDINGS", "lit_advgame.defenses.rank", "RANK_ROUNDINGS"),
    ("SMOOTHED_OUTPUTS", "lit_advgame.defenses.smoothed", "SMOOTHED_OUTPUTS"),
    ("DEFENSE_ANALYSES", "lit_advgame.defenses.module", "DEFENSE_ANALYSES"),
    ("EPS_SEARCHES", "lit_advgame.attributions.cost", "EPS_SEARCHES"),
    ("CW_BOXES", "lit_advgame.attributions.cost", "CW_BOXES"),
    ("NORMS", "lit_advgame.attributions.cost", "COST_ATTACKS"),
    ("FAILURE_POLICIES", "lit_advgame.attributions.regional", "FAILURE_POLICIES"),
    ("REGIONAL_ESTIMATORS", "lit_advgame.attributions.regional", "ESTIMATORS"),
]


@pytest.mark.parametrize("vocabulary_name, module, name", VOCABULARY_SOURCES)
def test_the_vocabulary_names_every_choice_of_the_code(vocabulary_name, module, name):
    from lit_advgame import vocabulary

    own, shared = _tuple(module, name), getattr(vocabulary, vocabulary_name)
    assert set(shared) == set(own)
    if isinstance(own, tuple):  # a tuple of names is the vocabulary's own object (imported, not re-typed)
        assert own is shared, f"{module}.{name} re-types lit_advgame.vocabulary.{vocabulary_name}: import it"


def test_vocabulary_tuples_derive_from_their_literal_aliases():
    from typing import Literal, get_args, get_origin

    from lit_advgame import vocabulary

    aliases = {name: value for name, value in vars(vocabulary).items() if get_origin(value) is Literal}
    assert len(aliases) >= 25
    tuples = [v for n, v in vars(vocabulary).items() if n.isupper() and not n.startswith("_") and isinstance(v, tuple)]
    assert len(tuples) == len(aliases)
    for value in tuples:
        assert any(get_args(alias) == value for alias in aliases.values())
    assert set(vocabulary.PRESET_ALIASES.values()) <= set(vocabulary.ATTACK_PRESETS)
    assert inspect.signature(lit_advgame.data.ImageDataModule).parameters["predict_split"].annotation in (
        "Split",
        vocabulary.Split,
    )
