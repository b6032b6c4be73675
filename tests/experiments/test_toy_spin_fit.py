"""experiments/toy_spin_fit.py: the fitted turn about z against known rotations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import toy_spin_fit as fit
from tools.toyworld import scene


def test_recovers_known_turns_exactly():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(500, 3, generator=g) - 0.5
    angles = [0.0, 12.5, -40.0, 60.0, 170.0]
    rad = torch.tensor([[math.radians(a)] for a in angles])
    positions = scene.rotate_z(p[None].expand(len(angles), -1, -1), rad)
    rows = fit.spin_fit(torch.cat([p[None], positions]))
    for a, r in zip(angles, rows, strict=True):
        assert r["degrees"] == pytest.approx(a, abs=1e-4)
        assert r["explained"] == (0.0 if a == 0 else pytest.approx(1.0, abs=1e-5))


def test_a_turn_with_noise_and_a_motion_that_is_no_turn():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(2000, 3, generator=g) - 0.5
    turned = scene.rotate_z(p, torch.tensor(math.radians(30.0)))
    noisy = turned + 0.01 * torch.randn(p.shape, generator=g)
    shifted = p + torch.tensor([0.0, 0.0, 0.2])  # straight up: no turn about z at all
    bent = scene.deform(p, "swaying", torch.tensor(0.25))  # the world's sway at its extreme
    r_noisy, r_shift, r_bent = fit.spin_fit(torch.stack([p, noisy, shifted, bent]))
    assert r_noisy["degrees"] == pytest.approx(30.0, abs=0.5) and r_noisy["explained"] > 0.8
    assert abs(r_shift["degrees"]) < 1e-6 and abs(r_shift["explained"]) < 1e-6
    assert r_bent["explained"] < 0.3


def test_cli_on_a_saved_asset_and_bad_input(monkeypatch, capsys, tmp_path):
    from ayg.asset import Asset
    from ayg.deformation import DeformationField, Motion, Segment
    from ayg.gaussians import GaussianCloud

    cloud = GaussianCloud.init_sphere(300, radius=0.4, generator=torch.Generator().manual_seed(2))
    asset = Asset.from_cloud(cloud, Motion([Segment(DeformationField(), "base", "a red ball")]))
    path = asset.save(tmp_path / "a.ayg")
    monkeypatch.setattr(
        "sys.argv", ["toy_spin_fit.py", "--asset", str(path), "--json", "--times", "3"]
    )
    fit.main()
    out = json.loads(capsys.readouterr().out)
    assert out["gaussians"] == 300 and len(out["fit"]) == 2
    for r in out["fit"]:  # a fresh deformation field moves nothing
        assert r["degrees"] == 0.0 and r["explained"] == 0.0
    assert out["fit"][-1]["world"] == pytest.approx(360.0 * scene.SPIN_TURNS * asset.duration)

    bad = tmp_path / "x.ayg"
    bad.write_bytes(b"not an asset")
    for argv in (["--asset", str(bad)], ["--asset", str(path), "--times", "1"]):
        monkeypatch.setattr("sys.argv", ["toy_spin_fit.py", *argv])
        with pytest.raises(SystemExit) as exc:
            fit.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("usage:") or "error:" in err[-1]
        assert len([line for line in err if "error:" in line]) == 1
    with pytest.raises(ValueError, match="T >= 2"):
        fit.spin_fit(torch.zeros(1, 5, 3))
