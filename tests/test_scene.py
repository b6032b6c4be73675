"""Tests of ayg.scene: spec validation and composition of assets into one scene asset."""

from __future__ import annotations

import json

import pytest
import torch

from ayg.asset import Asset, Placement, load
from ayg.gaussians import save_ply
from ayg.scene import SceneError, compose, load_spec
from test_asset import euler_matrix, make_cloud, make_motion


@pytest.fixture()
def parts(tmp_path):
    a = Asset.from_cloud(
        make_cloud(n=4, seed=1), make_motion(1, seed=1), prompts=["a red ball spinning"]
    )
    b = Asset.from_cloud(
        make_cloud(n=3, seed=2, sh_degree=1),
        make_motion(2, seed=5),
        prompts=["a blue cone nodding"],
    )
    a.save(tmp_path / "a.ayg")
    b.save(tmp_path / "b.ayg")
    save_ply(make_cloud(n=2, seed=3, anisotropic=True), tmp_path / "c.ply")
    return a, b


def write_spec(path, spec) -> str:
    path.write_text(json.dumps(spec))
    return str(path)


def test_compose_two_assets(tmp_path, parts):
    a, b = parts
    spec = write_spec(tmp_path / "scene.json", {
        "description": "two objects",
        "objects": [
            {"asset": "a.ayg", "name": "ball", "scale": 0.5, "translation": [1, 0, 0]},
            {"asset": "b.ayg", "rotation": [0, 0, 90], "translation": [-1, 0, 0], "time_offset": 0.5},
            {"asset": "c.ply", "quaternion": [0, 0, 0, 1], "scale": 2.0},
        ],
    })  # fmt: skip
    scene = compose(spec)
    assert [o.name for o in scene.objects] == ["ball", "b", "c"]
    assert scene.num_gaussians == 9 and scene.sh_degree == 2
    assert scene.duration == pytest.approx(0.5 + 1.5)
    assert scene.prompts == ["a red ball spinning", "a blue cone nodding"]
    g = torch.tensor([0.0, 0.6, 1.2, 2.0])
    with torch.no_grad():
        pos = scene.positions(g)  # (T, 9, 3)
        pa = a.positions(g)
        pb = b.positions((g - 0.5).clamp(min=0))
    torch.testing.assert_close(pos[:, :4], 0.5 * pa + torch.tensor([1.0, 0, 0]))
    R = euler_matrix(0, 0, 90).float()
    torch.testing.assert_close(
        pos[:, 4:7], pb @ R.T + torch.tensor([-1.0, 0, 0]), rtol=1e-5, atol=1e-6
    )
    c_means = load(tmp_path / "c.ply").positions([0.0])[0]
    Rz180 = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))
    torch.testing.assert_close(pos[0, 7:], 2.0 * c_means @ Rz180.T, rtol=1e-5, atol=1e-6)
    # the scene saves and loads like any asset
    back = load(scene.save(tmp_path / "scene.ayg"))
    with torch.no_grad():
        torch.testing.assert_close(back.positions(g), pos)
    assert back.header["scene"]["description"] == "two objects"
    assert back.header["scene"]["sources"][0]["asset"] == "a.ayg"


def test_compose_nested_flattens(tmp_path, parts):
    a, b = parts
    inner = write_spec(tmp_path / "inner.json", {"objects": [
        {"asset": "a.ayg", "translation": [0.3, 0, 0], "rotation": [10, 0, 0], "time_offset": 0.25},
        {"asset": "b.ayg", "scale": 2.0},
    ]})  # fmt: skip
    compose(inner).save(tmp_path / "inner.ayg")
    outer_placement = {
        "scale": 1.5,
        "rotation": [0, 30, 0],
        "translation": [0, 1, 0],
        "time_offset": 0.5,
    }
    outer = write_spec(
        tmp_path / "outer.json",
        {"objects": [{"asset": "inner.ayg", "name": "group", **outer_placement}]},
    )
    scene = compose(outer)
    assert [o.name for o in scene.objects] == ["group/a", "group/b"]
    inner_asset = load(tmp_path / "inner.ayg")
    p = Placement.from_euler_degrees(0, 30, 0, scale=1.5, translation=(0, 1, 0), time_offset=0.5)
    g = torch.tensor([0.0, 0.4, 0.9, 1.7, 3.0])
    with torch.no_grad():
        nested = p.apply(inner_asset.positions((g - 0.5).clamp(0, inner_asset.duration)))
        torch.testing.assert_close(scene.positions(g), nested, rtol=1e-5, atol=1e-5)
    assert scene.duration == pytest.approx(0.5 + inner_asset.duration)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"objects": []}, "'objects' is empty"),
        ({"things": []}, "unknown keys ['things']"),
        ([1, 2], "must be a JSON object"),
        ({"objects": [{"asset": "missing.ayg"}]}, "objects[0].asset: no such file"),
        (
            {"objects": [{"asset": "a.ayg", "colour": "red"}]},
            "objects[0] has unknown keys ['colour']",
        ),
        (
            {"objects": [{"asset": "a.ayg", "scale": "big"}]},
            "objects[0].scale must be a positive number",
        ),
        (
            {"objects": [{"asset": "a.ayg", "scale": 0}]},
            "objects[0].scale must be a positive number",
        ),
        (
            {"objects": [{"asset": "a.ayg", "translation": [1, 2]}]},
            "translation must be a list of 3 numbers",
        ),
        (
            {"objects": [{"asset": "a.ayg", "rotation": [1, 2, "x"]}]},
            "rotation must be 3 Euler angles",
        ),
        (
            {"objects": [{"asset": "a.ayg", "rotation": [0, 0, 1], "quaternion": [1, 0, 0, 0]}]},
            "both 'rotation' and 'quaternion'",
        ),
        (
            {"objects": [{"asset": "a.ayg", "quaternion": [0, 0, 0, 0]}]},
            "quaternion must be 4 numbers",
        ),
        ({"objects": [{"asset": "a.ayg", "time_offset": -1}]}, "time_offset must be a number >= 0"),
        ({"objects": [{"asset": "a.ayg", "name": 3}]}, "name must be a non-empty string"),
        ({"objects": [{"scale": 1}]}, "needs an 'asset'"),
        ({"objects": ["a.ayg"]}, "objects[0] must be a JSON object"),
    ],
)
def test_spec_errors(tmp_path, parts, spec, message):
    path = write_spec(tmp_path / "bad.json", spec)
    with pytest.raises(SceneError) as e:
        load_spec(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "bad.json" in str(e.value)


def test_spec_file_errors(tmp_path):
    with pytest.raises(SceneError, match="no such file"):
        load_spec(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{objects: ")
    with pytest.raises(SceneError, match="not valid JSON"):
        load_spec(tmp_path / "broken.json")
    (tmp_path / "x.json").write_text(json.dumps({"objects": [{"asset": "x.json"}]}))
    with pytest.raises(ValueError, match="not a safetensors file"):
        compose(tmp_path / "x.json")  # an entry that is not an asset: the asset's own error
