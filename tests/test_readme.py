"""The README's Python example, run verbatim in a fresh interpreter. Only the contents of the
``toy`` preset it names are swapped for a few-step run with tiny random teachers first, so that
it takes seconds: the code itself is the README's, character for character."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

FAST_TOY = """
import ayg.config as config


def fast_toy():
    cfg = config.tiny_preset()
    cfg.preset = "toy"
    cfg.stage1.steps, cfg.stage2.steps = 2, 1
    cfg.output.preview = False
    return cfg


config.PRESETS["toy"] = fast_toy
"""


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_verbatim(tmp_path):
    code = python_example()
    assert "ayg.render(" in code and "ayg.load(" in code
    check = "\nassert tuple(out.rgb.shape[:2]) == (4, 3), out.rgb.shape\nprint('ok')\n"
    res = subprocess.run(
        [sys.executable, "-c", FAST_TOY + code + check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")
    assert (tmp_path / "runs" / "cone" / "asset.ayg").exists()
    assert (tmp_path / "copy.ayg").exists()


def test_ayg_render_is_callable_whatever_was_imported_first():
    """``import ayg.render`` (done by almost every module) leaves ``ayg.render`` callable, and
    the module's own names stay reachable through it."""
    code = (
        "import ayg.render, ayg\n"
        "from ayg.asset import Asset\n"
        "from ayg.cameras import orbit_cameras\n"
        "from ayg.examples import example_cloud\n"
        "a = Asset.from_cloud(example_cloud())\n"
        "out = ayg.render(a, orbit_cameras(2, width=16, height=16), [0.0, 0.5])\n"
        "assert tuple(out.rgb.shape) == (2, 3, 16, 16)\n"
        "assert callable(ayg.render.rasterize) and ayg.render.NEAR_PLANE > 0\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
