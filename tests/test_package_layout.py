"""What the installed package holds: the toy preset's nets and weights, not the toy world's
renderer, samplers or trainer (``tools/toyworld``), and no import of the repository's
``tools``, ``experiments`` or ``benchmarks`` (CI runs this against the installed wheel)."""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import ayg

REPO_ONLY = {"tools", "experiments", "benchmarks"}


def test_the_package_ships_the_toy_nets_but_not_the_trainer():
    for name in ("ayg.toyworld.train", "ayg.toyworld.scene", "ayg.toyworld.data"):
        assert importlib.util.find_spec(name) is None, f"{name} is in the package"
    for name in ("ayg.toyworld.nets", "ayg.toyworld.vocab", "ayg.evaluation.toy48"):
        assert importlib.util.find_spec(name) is not None, f"{name} is missing"
    weights = importlib.resources.files("ayg.toyworld") / "weights"
    for net in ("image", "multiview", "video", "appearance", "motion"):
        assert (weights / f"{net}.safetensors").is_file(), net


def test_no_package_module_imports_repository_code():
    # every import statement, at module level or inside a function
    bad = []
    for path in sorted(Path(ayg.__file__).resolve().parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in REPO_ONLY]
    assert not bad


def test_the_command_line_imports_without_the_repository(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != Path(root)]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    code = (
        "import sys, ayg.cli, ayg.evaluate, ayg.teachers.toy, ayg.evaluation.ablations\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(REPO_ONLY)!r}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
