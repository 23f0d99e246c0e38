"""The house rules, read from the source: dependencies point one way, stage 2 and 3 see the autoencoder
only through its model, quantizer and losses, and only cli/ speaks in command-line flags."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# lower rooms never import higher ones; rooms of one rank never import each other (diffusion <-> priors)
RANK = {"plumbing": 0, "configs": 0, "data": 1, "autoencoder": 2, "latents": 3, "text": 3, "diffusion": 4, "priors": 4,
        "pipelines": 5, "evaluation": 6, "cli": 7}
AUTOENCODER_FACE = {"model", "quantizer", "losses"}  # what stage 2 and 3 may import from stage 1


def vqldm_imports(path: Path):
    """(line, imported vqldm module path as a list of parts) for every import in ``path``, lazy ones included."""
    room = path.relative_to(REPO).parts
    package = ["vqldm", *room[:-1]]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "vqldm":
                target = node.module.split(".")
            else:
                continue
            names = [a.name for a in node.names]
            if len(target) == 2:  # `from vqldm.x import module`
                yield from ((node.lineno, target[1:] + [n]) for n in names)
            else:
                yield node.lineno, target[1:]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vqldm":
                    yield node.lineno, a.name.split(".")[1:]


def modules():
    for room in RANK:
        yield from sorted((REPO / room).rglob("*.py"))


def test_dependencies_point_one_way():
    wrong = []
    for path in modules():
        room = path.relative_to(REPO).parts[0]
        for line, target in vqldm_imports(path):
            if not target or target[0] not in RANK or target[0] == room:
                continue
            if RANK[target[0]] >= RANK[room]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports vqldm.{'.'.join(target)}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_later_stages_see_the_autoencoder_through_its_model_only():
    wrong = []
    for room in ("diffusion", "priors", "pipelines"):
        for path in sorted((REPO / room).rglob("*.py")):
            for line, target in vqldm_imports(path):
                if target[:1] == ["autoencoder"] and (len(target) < 2 or target[1] not in AUTOENCODER_FACE):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports vqldm.{'.'.join(target)}")
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_parses_flags():
    for path in modules():
        if path.relative_to(REPO).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "argparse" not in imported, f"{path.relative_to(REPO)} imports argparse; parse flags in cli/"
