"""experiments/toy_motion_fit.py: the fits against the toy world's own motions, the replays."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import toy_motion_fit as fit
from tools.toyworld import scene


def _cube_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) - 0.5) * 0.6  # inside the world's cube


def test_recovers_the_worlds_sway_nod_and_spin():
    p = _cube_points(800, 0)
    tau = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.75])
    sway = fit.motion_fit(scene.deform(p[None].expand(5, -1, -1), "swaying", tau))
    for t, r in zip(tau[1:], sway, strict=True):
        assert r["sway"] == pytest.approx(float(scene.bend_amount(t, "swaying")), abs=1e-6)
        assert r["nod"] == pytest.approx(0.0, abs=1e-6)
        assert r["bend_explained"] == pytest.approx(1.0, abs=1e-6)
        assert r["local_coherence"] > 0.99
    nod = fit.motion_fit(scene.deform(p[None].expand(5, -1, -1), "nodding", tau))
    for t, r in zip(tau[1:], nod, strict=True):
        assert r["nod"] == pytest.approx(float(scene.bend_amount(t, "nodding")), abs=1e-6)
        assert r["sway"] == pytest.approx(0.0, abs=1e-6)
    spin = fit.motion_fit(scene.deform(p[None].expand(5, -1, -1), "spinning", tau))
    for t, r in zip(tau[1:], spin, strict=True):
        assert r["spin_degrees"] == pytest.approx(
            math.degrees(float(scene.spin_angle(t))), abs=1e-4
        )
        assert r["spin_explained"] == pytest.approx(1.0, abs=1e-6)
        assert r["affine_explained"] == pytest.approx(1.0, abs=1e-6)  # a turn is affine
        assert r["bend_explained"] < 0.5


def test_a_diagonal_bend_affine_maps_and_noise():
    p = _cube_points(1000, 1)
    w = scene.bend_profile(p[:, 2])
    diagonal = p + torch.stack([0.1 * w, -0.2 * w, 0 * w], -1)  # a bend in no axis direction
    sheared = p @ torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 1.0]]) + 0.05
    noise = p + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2))
    r_diag, r_shear, r_noise = fit.motion_fit(torch.stack([p, diagonal, sheared, noise]))
    assert (r_diag["nod"], r_diag["sway"]) == (pytest.approx(0.1), pytest.approx(-0.2))
    assert r_diag["bend_explained"] == pytest.approx(1.0, abs=1e-6)
    assert r_shear["affine_explained"] == pytest.approx(1.0, abs=1e-6)
    assert r_shear["local_coherence"] > 0.99
    # independent noise: no model explains it and neighbours do not move together
    assert r_noise["affine_explained"] < 0.05 and r_noise["bend_explained"] < 0.05
    assert abs(r_noise["local_coherence"]) < 0.15
    still = fit.motion_fit(torch.stack([p, p]))[0]
    assert still["bend_explained"] == still["affine_explained"] == still["local_coherence"] == 0.0
    with pytest.raises(ValueError, match="T >= 2"):
        fit.motion_fit(torch.zeros(1, 5, 3))


def _asset(motion_positions=None, n=300):
    """A toy-sized asset; ``motion_positions`` replaces its centres' motion (a callable of g)."""
    from ayg.asset import Asset
    from ayg.deformation import DeformationField, Motion, Segment
    from ayg.gaussians import GaussianCloud

    cloud = GaussianCloud.init_sphere(n, radius=0.3, generator=torch.Generator().manual_seed(3))
    asset = Asset.from_cloud(cloud, Motion([Segment(DeformationField(), "base", "a red cube")]))
    if motion_positions is None:
        return asset
    return fit.MovedAsset(asset, lambda rest, g, q: motion_positions(rest, g))


def test_replays_follow_their_models():
    g = torch.tensor([0.0, 0.3, 0.8])
    wobble = torch.tensor([0.0, 0.03, -0.02])
    # a world sway plus a wobble that is no bend: the fitted bend is the sway, the residual the
    # wobble, and the two add up to the asset
    asset = _asset(
        lambda rest, g: (
            scene.deform(rest[None].expand(len(g), -1, -1), "swaying", g)
            + wobble[: len(g), None, None] * rest[None].flip(-1)
        )
    )
    q = asset.positions(g)
    rest = q[0]
    bend = fit.replay(asset, "fit-bend").positions(g)
    residual = fit.replay(asset, "residual").positions(g)
    torch.testing.assert_close(bend - rest + residual, q)
    world = fit.replay(asset, "world-sway").positions(g)
    torch.testing.assert_close(world, scene.deform(rest[None].expand(3, -1, -1), "swaying", g))
    spin = fit.replay(asset, "world-spin").positions(g)
    torch.testing.assert_close(spin, scene.deform(rest[None].expand(3, -1, -1), "spinning", g))
    pure = _asset(lambda rest, g: scene.deform(rest[None].expand(len(g), -1, -1), "swaying", g))
    torch.testing.assert_close(
        fit.replay(pure, "residual").positions(g), pure.positions(g)[:1].expand(3, -1, -1)
    )
    torch.testing.assert_close(fit.replay(pure, "fit-bend").positions(g), pure.positions(g))
    turned = _asset(lambda rest, g: scene.deform(rest[None].expand(len(g), -1, -1), "spinning", g))
    torch.testing.assert_close(
        fit.replay(turned, "fit-spin").positions(g), turned.positions(g), atol=1e-5, rtol=0
    )
    assert fit.replay(asset, "asset") is asset
    with pytest.raises(ValueError, match="allowed: asset, fit-bend"):
        fit.replay(asset, "dance")


def test_cli_with_the_classifier_and_bad_input(monkeypatch, capsys, tmp_path):
    from ayg.toyworld.vocab import MOTION_CLASSES

    path = _asset().save(tmp_path / "a.ayg")
    argv = ["toy_motion_fit.py", "--asset", str(path), "--json", "--times", "3", "--classify"]
    monkeypatch.setattr("sys.argv", argv)
    fit.main()
    out = json.loads(capsys.readouterr().out)
    assert out["gaussians"] == 300 and len(out["fit"]) == 2
    for r in out["fit"]:  # a fresh deformation field moves nothing
        assert r["sway"] == r["nod"] == r["spin_degrees"] == 0.0
    assert out["fit"][0]["world_sway"] == pytest.approx(
        float(scene.bend_amount(torch.tensor(out["fit"][0]["tau"]), "swaying"))
    )
    assert set(out["readings"]) == set(fit.REPLAYS)
    for labels in out["readings"].values():
        assert len(labels) == 8 and set(labels) <= set(MOTION_CLASSES)
    # nothing moves in the asset and in its fitted replays: all three read alike on every view
    assert out["readings"]["asset"] == out["readings"]["fit-bend"] == out["readings"]["residual"]

    bad = tmp_path / "x.ayg"
    bad.write_bytes(b"not an asset")
    for args in (["--asset", str(bad)], ["--asset", str(path), "--times", "1"]):
        monkeypatch.setattr("sys.argv", ["toy_motion_fit.py", *args])
        with pytest.raises(SystemExit) as exc:
            fit.main()
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len([line for line in err if "error:" in line]) == 1
