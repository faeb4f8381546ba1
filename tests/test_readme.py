"""README.md's examples run as written, and the files its commands name exist.

Every ```python block of README.md is executed, in order, in one namespace that holds small stand-ins for the
names the README leaves free (``model``, ``x``, ``y``, ``x_adv``): the digits ResNet-8 of ``checkpoints/`` (it has
skip connections, so every preset applies, SGM and HybridIR included), two test digits it classifies correctly and
a short PGD ``x_adv``. The blocks run unedited, so their budgets are the README's own. Bash blocks are not run;
the configs, scripts and checkpoints they (and the prose) name must exist.
"""

from __future__ import annotations

import ast
import builtins
import math
import re
from dataclasses import dataclass

import pytest
import torch

from lit_advgame.attacks import build_attack
from lit_advgame.classifiers import load_classifier
from lit_advgame.data import get_datamodule
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
#: the README's free names, provided by :func:`stand_ins`
STAND_INS = ("model", "x", "y", "x_adv")
#: ``.yaml`` names in the README that are files a run writes, not configs
RUN_OUTPUTS = {"config.yaml", "hparams.yaml"}


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # README line of the block's first code line (1-based)
    source: str


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    return [Block(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)]


def python_blocks() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang == "python"]


def _binds(statement: ast.stmt) -> set[str]:
    names = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def free_names(blocks: list[Block]) -> set[str]:
    """Names the blocks read before a statement binds them (builtins aside), the blocks' statements in order."""
    bound: set[str] = set(dir(builtins))
    free: set[str] = set()
    for block in blocks:
        for statement in ast.parse(block.source).body:
            reads = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            local = {
                n.id
                for c in ast.walk(statement)
                if isinstance(c, ast.comprehension)
                for n in ast.walk(c.target)
                if isinstance(n, ast.Name)
            }
            local |= {a.arg for a in ast.walk(statement) if isinstance(a, ast.arg)}  # lambda/function parameters
            free |= reads - bound - local
            bound |= _binds(statement)
    return free


def test_readme_blocks_are_found():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert {b.lang for b in blocks} >= {"python", "bash"}
    first = python_blocks()[0]
    assert README.read_text(encoding="utf-8").splitlines()[first.line - 1] == first.source.splitlines()[0]


def test_readme_python_blocks_use_only_the_provided_free_names():
    free = free_names(python_blocks())
    assert free <= set(STAND_INS), (
        f"README.md's python blocks read {sorted(free - set(STAND_INS))} without defining them; define them in "
        f"the block or add a stand-in to tests/test_readme.py (provided: {', '.join(STAND_INS)})"
    )


@pytest.fixture
def stand_ins() -> dict[str, object]:
    """``model``: the digits ResNet-8 classifier; ``x``, ``y``: two test digits it classifies correctly;
    ``x_adv``: a 5-step PGD of them (seeded)."""
    model = load_classifier(REPO_ROOT / "checkpoints" / "digits_resnet8.pt").model
    data = get_datamodule("digits", image_size=16, batch_size=16)
    data.setup("test")
    images, labels = next(iter(data.test_dataloader()))
    with torch.no_grad():
        correct = model(images).argmax(dim=1) == labels
    x, y = images[correct][:2], labels[correct][:2]
    assert x.shape == (2, 1, 16, 16)
    x_adv = build_attack("pgd", model, steps=5, seed=0)(x, y)
    return {"model": model, "x": x, "y": y, "x_adv": x_adv}


def test_readme_python_blocks_run(stand_ins, capsys, tmp_path, monkeypatch):
    """Each block runs unedited (tracebacks point at README.md lines) in a temporary folder (the repository's
    checkpoints linked in; what the blocks write stays out of the tree); then the README's comments are checked."""
    (tmp_path / "checkpoints").symlink_to(REPO_ROOT / "checkpoints", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example", **stand_ins}
    x = stand_ins["x"]
    blocks = python_blocks()
    for block in blocks:
        exec(compile("\n" * (block.line - 1) + block.source, str(README), "exec"), namespace)

    # Interactions: the printed dict holds values, standard errors and the forward-pass count
    printed = ast.literal_eval(capsys.readouterr().out.strip())
    assert all(key.startswith("interaction/") for key in printed)
    assert any(key.endswith("_stderr") for key in printed) and "interaction/num_forward_passes" in printed
    assert all(math.isfinite(value) for value in printed.values())
    assert namespace["dis"].values.shape == (len(namespace["change"].orders),)
    # "n = 9 players: exact oracle (all 2^n coalitions)", on both images
    exact = namespace["exact"]
    assert exact.num_players == 9 and exact.num_forward_passes == 2 * 2**9
    assert exact.shapley.shape == (2, 9)
    assert namespace["inside"].average_interaction.shape == (2,)

    # Attacks: "pixel space, batched, ‖δ‖∞ ≤ 16/255"
    x_adv = namespace["x_adv"]
    assert x_adv is not stand_ins["x_adv"] and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 16 / 255 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert "hybridir" in namespace["available_presets"]()

    # Robust accuracy: "robustness.json + robustness.md", robust accuracy never above clean
    accuracy = namespace["result"].accuracy
    assert accuracy["worst_case"] <= min(accuracy["pgd"], accuracy["autoattack"]) <= accuracy["clean"]
    assert (tmp_path / "runs" / "eval" / "robustness.json").is_file()
    assert "autoattack" in namespace["table"].lower()


def readme_paths(text: str) -> dict[str, set[str]]:
    """Repository paths README.md names: configs (``--config configs/X.yaml``, ``configs/X.yaml`` and the
    config names of the tables, e.g. ```trs_digits.yaml```), scripts and checkpoints."""
    configs = set(re.findall(r"\bconfigs/[\w./-]+?\.yaml\b", text))
    configs |= {f"configs/{name}" for name in re.findall(r"`(\w+\.yaml)`", text) if name not in RUN_OUTPUTS}
    return {
        "--config": set(re.findall(r"--config\s+([^\s`'\"]+)", text)),
        "configs": configs,
        "scripts": set(re.findall(r"\bscripts/[\w.-]+\.(?:py|sh)\b", text)),
        "checkpoints": set(re.findall(r"\bcheckpoints/[\w.-]+\.(?:pt|md)\b", text)),
    }


def test_readme_paths_exist():
    paths = readme_paths(README.read_text(encoding="utf-8"))
    assert all(paths.values()), f"a pattern matched nothing in README.md: {paths}"
    missing = sorted(p for group in paths.values() for p in group if not (REPO_ROOT / p).is_file())
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_readme_paths_finds_what_it_should():
    text = (
        "`lit-advgame fit --config configs/a.yaml --config configs/b_digits.yaml`, `trs_digits.yaml`, "
        "`hparams.yaml`, `python scripts/bench.py`, `bash scripts/make.sh`, checkpoints/digits_mlp.pt."
    )
    paths = readme_paths(text)
    assert paths["--config"] == {"configs/a.yaml", "configs/b_digits.yaml"}
    assert paths["configs"] == {"configs/a.yaml", "configs/b_digits.yaml", "configs/trs_digits.yaml"}
    assert paths["scripts"] == {"scripts/bench.py", "scripts/make.sh"}
    assert paths["checkpoints"] == {"checkpoints/digits_mlp.pt"}


def test_free_names_follow_statement_order():
    first = Block("python", 1, "import torch\nz = f(torch.ones(1))\nq = [a for a in range(3)]\nh = lambda s: s + w\n")
    second = Block("python", 9, "print(z, q, h, k)\nk = 1\n")
    assert free_names([first, second]) == {"f", "w", "k"}
