"""Tests of ayg.asset (the .ayg file, placements, world-space views, SH rotation) and of the
atomic writes of ayg.io_utils."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ayg import io_utils
from ayg.asset import (
    Asset,
    AssetError,
    AssetObject,
    Placement,
    load,
    rotate_sh,
    sh_basis,
)
from ayg.deformation import DeformationConfig, DeformationField, Motion, Segment
from ayg.gaussians import GaussianCloud, quat_to_rotmat, save_ply

SMALL = DeformationConfig(hidden=16)


def make_cloud(
    n: int = 6, sh_degree: int = 2, seed: int = 0, anisotropic: bool = False
) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2
    log_scales = torch.randn(n, 3 if anisotropic else 1, generator=g) * 0.2 - 3.0
    quats = torch.randn(n, 4, generator=g) if anisotropic else None
    return GaussianCloud(
        (torch.rand(n, 3, generator=g) - 0.5) * 0.6,
        log_scales,
        quats,
        torch.randn(n, generator=g),
        torch.randn(n, 3, generator=g) * 0.5,
        torch.randn(n, K - 1, 3, generator=g) * 0.3,
    )


def random_field(seed: int = 0) -> DeformationField:
    torch.manual_seed(seed)
    f = DeformationField(SMALL)
    last = f.mlp[-1]
    with torch.no_grad():
        last.weight.normal_(0.0, 0.5)
        last.bias.normal_(0.0, 0.1)
    return f


def make_motion(segments: int = 1, seed: int = 0) -> Motion:
    kinds = ["base"] + ["extend"] * (segments - 1)
    return Motion(
        [Segment(random_field(seed + k), kind, f"prompt {k}") for k, kind in enumerate(kinds)]
    )


def make_asset(**kw) -> Asset:
    return Asset.from_cloud(make_cloud(), make_motion(2), prompts=["a red ball", "a red ball spinning"],
                            config={"seed": 3, "stage2": {"steps": 10}}, **kw)  # fmt: skip


def euler_matrix(rx: float, ry: float, rz: float) -> torch.Tensor:
    """Rz·Ry·Rx written out, float64."""
    a, b, c = (math.radians(v) for v in (rx, ry, rz))
    Rx = torch.tensor(
        [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
        dtype=torch.float64,
    )
    Ry = torch.tensor(
        [[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]],
        dtype=torch.float64,
    )
    Rz = torch.tensor(
        [[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]],
        dtype=torch.float64,
    )
    return Rz @ Ry @ Rx


# ---------------------------------------------------------------------------------- file I/O


def test_round_trip_tensors_and_header(tmp_path):
    asset = make_asset()
    path = asset.save(tmp_path / "a.ayg")
    back = load(path)
    assert len(back.objects) == 1
    c0, c1 = asset.objects[0].cloud, back.objects[0].cloud
    for name in ("means", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
        torch.testing.assert_close(
            getattr(c1, name).detach(), getattr(c0, name).detach(), rtol=0, atol=0
        )
    assert c1.quats is None and c1.sh_degree == 2
    m0, m1 = asset.objects[0].motion.to_tensors(""), back.objects[0].motion.to_tensors("")
    assert m0.keys() == m1.keys()
    for k in m0:
        torch.testing.assert_close(m1[k], m0[k], rtol=0, atol=0)
    g = torch.linspace(0, asset.duration, 7)
    with torch.no_grad():
        torch.testing.assert_close(back.positions(g), asset.positions(g))
    assert back.duration == asset.duration == 1.5
    assert back.prompts == ["a red ball", "a red ball spinning"]
    assert back.header["config"] == {"seed": 3, "stage2": {"steps": 10}}
    # saving the loaded asset gives the same header
    assert back.full_header() == asset.full_header()


def test_readable_without_ayg(tmp_path):
    asset = make_asset()
    asset.save(tmp_path / "a.ayg")
    tensors = load_file(str(tmp_path / "a.ayg"))
    with safe_open(str(tmp_path / "a.ayg"), "pt") as f:
        header = json.loads(f.metadata()["ayg"])
    assert header["format_version"] == 1
    assert header["prompts"] == ["a red ball", "a red ball spinning"]
    assert header["config"]["seed"] == 3
    segs = header["segments"]
    assert [s["kind"] for s in segs] == ["base", "extend"]
    assert [s["start"] for s in segs] == [0.0, 0.5]
    assert [s["prompt"] for s in segs] == ["prompt 0", "prompt 1"]
    assert segs[0]["config"]["hidden"] == 16 and segs[0]["object"] == 0
    obj = header["objects"][0]
    assert obj["placement"] == {
        "scale": 1.0,
        "rotation": [1.0, 0.0, 0.0, 0.0],
        "translation": [0.0, 0.0, 0.0],
        "time_offset": 0.0,
    }
    assert obj["num_gaussians"] == 6 and obj["sh_degree"] == 2 and obj["isotropic"] is True
    # tensor names as documented in the module docstring
    gauss = {k for k in tensors if ".gaussians." in k}
    assert gauss == {
        f"objects.0.gaussians.{n}"
        for n in ("means", "log_scales", "opacity_logits", "sh_dc", "sh_rest")
    }
    assert tensors["objects.0.gaussians.means"].shape == (6, 3)
    assert tensors["objects.0.gaussians.sh_rest"].shape == (6, 8, 3)
    motion = {k for k in tensors if ".motion." in k}
    assert (
        "objects.0.motion.0.mlp.0.weight" in motion and "objects.0.motion.1.mlp.0.weight" in motion
    )
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_static_and_anisotropic_round_trip(tmp_path):
    cloud = make_cloud(anisotropic=True, sh_degree=1)
    asset = Asset.from_cloud(cloud, None, prompts="x")
    assert asset.duration == 1.0 and asset.is_static
    back = load(asset.save(tmp_path / "s.ayg"))
    assert back.objects[0].motion is None
    torch.testing.assert_close(back.objects[0].cloud.quats.detach(), cloud.quats.detach())
    assert back.prompts == ["x"]


def test_from_ply(tmp_path):
    cloud = make_cloud(anisotropic=True, sh_degree=2)
    save_ply(cloud, tmp_path / "c.ply")
    asset = load(tmp_path / "c.ply")
    assert asset.is_static and asset.num_gaussians == 6 and asset.sh_degree == 2
    torch.testing.assert_close(asset.positions([0.0, 0.7])[1], cloud.means.detach())
    with pytest.raises(AssetError, match="no such file"):
        Asset.from_ply(tmp_path / "missing.ply")


def test_atomic_save_leaves_no_temp_and_survives_interruption(tmp_path, monkeypatch):
    path = tmp_path / "a.ayg"
    make_asset().save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ayg"]
    before = path.read_bytes()

    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    other = Asset.from_cloud(make_cloud(n=3), None)
    with pytest.raises(KeyboardInterrupt):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ayg"]


def test_io_utils_atomic_write(tmp_path):
    path = tmp_path / "x.txt"
    io_utils.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_write(path, "w") as f:
            f.write("new but")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    io_utils.write_json(tmp_path / "y.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "y.json").read_text()) == {"a": [1, 2]}
    io_utils.atomic_torch_save({"t": torch.ones(2)}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt")["t"].sum() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "x.txt", "y.json"]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_files(tmp_path):
    with pytest.raises(AssetError) as e:
        load(tmp_path / "nope.ayg")
    assert "no such file" in _one_line(e)

    (tmp_path / "junk.ayg").write_bytes(b"this is not a safetensors file at all" * 3)
    with pytest.raises(AssetError) as e:
        load(tmp_path / "junk.ayg")
    assert "not a safetensors file" in _one_line(e)

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.ayg"), metadata={"other": "1"})
    with pytest.raises(AssetError) as e:
        load(tmp_path / "plain.ayg")
    assert "without an 'ayg' header" in _one_line(e)

    asset = make_asset()
    header = asset.full_header()
    header["format_version"] = 99
    save_file(asset.tensors(), str(tmp_path / "v99.ayg"), metadata={"ayg": json.dumps(header)})
    with pytest.raises(AssetError) as e:
        load(tmp_path / "v99.ayg")
    assert "format version 99" in _one_line(e)

    tensors = asset.tensors()
    del tensors["objects.0.gaussians.sh_dc"]
    save_file(
        tensors, str(tmp_path / "missing.ayg"), metadata={"ayg": json.dumps(asset.full_header())}
    )
    with pytest.raises(AssetError) as e:
        load(tmp_path / "missing.ayg")
    assert "missing tensor 'objects.0.gaussians.sh_dc'" in _one_line(e)

    tensors = asset.tensors()
    del tensors["objects.0.motion.1.mlp.0.weight"]
    save_file(
        tensors, str(tmp_path / "nomotion.ayg"), metadata={"ayg": json.dumps(asset.full_header())}
    )
    with pytest.raises(AssetError) as e:
        load(tmp_path / "nomotion.ayg")
    assert "motion of object 0" in _one_line(e)


# ---------------------------------------------------------------------------------- placement


def test_placement_positions_scale_rotate_translate():
    cloud = make_cloud()
    p = Placement.from_euler_degrees(30, -50, 120, scale=2.5, translation=(1, -2, 0.5))
    torch.testing.assert_close(p.rotation_matrix(dtype=torch.float64), euler_matrix(30, -50, 120))
    asset = Asset([AssetObject(cloud, None, p)])
    x = cloud.means.detach().double()
    expected = 2.5 * x @ euler_matrix(30, -50, 120).T + torch.tensor(
        [1, -2, 0.5], dtype=torch.float64
    )
    torch.testing.assert_close(asset.positions([0.3])[0].double(), expected, rtol=1e-6, atol=1e-6)


def test_placement_compose_and_dict():
    a = Placement.from_euler_degrees(10, 20, 30, scale=2.0, translation=(1, 2, 3), time_offset=0.5)
    b = Placement.from_euler_degrees(
        -40, 5, 70, scale=0.5, translation=(0, -1, 0.2), time_offset=0.25
    )
    x = torch.randn(5, 3, dtype=torch.float64)
    ab = a.compose(b)
    torch.testing.assert_close(ab.apply(x), a.apply(b.apply(x)))
    assert ab.time_offset == 0.75 and ab.scale == 1.0
    assert Placement.from_dict(ab.to_dict()) == ab
    with pytest.raises(AssetError, match="scale"):
        Placement(scale=-1)
    with pytest.raises(AssetError, match="time_offset"):
        Placement(time_offset=-0.1)
    with pytest.raises(AssetError, match="zero"):
        Placement(rotation=(0, 0, 0, 0))


def test_time_offset_clamps():
    cloud, motion = make_cloud(), make_motion(1)
    asset = Asset([AssetObject(cloud, motion, Placement(time_offset=0.5))])
    assert asset.duration == 1.5
    means = cloud.means.detach()
    with torch.no_grad():
        pos = asset.positions([0.0, 0.2, 0.8, 1.5, 10.0])
        ref = motion.positions(means, torch.tensor([0.0, 0.3, 1.0]))
    torch.testing.assert_close(pos[0], means)  # before the offset: first pose
    torch.testing.assert_close(pos[1], means)
    torch.testing.assert_close(pos[2], ref[1])  # local time 0.3
    torch.testing.assert_close(pos[3], ref[2])  # end of the motion
    torch.testing.assert_close(pos[4], ref[2])  # held after the end
    assert (ref[2] - means).abs().max() > 1e-3  # the motion moves something


def test_gaussians_at_attributes_and_mixed_degrees():
    iso = make_cloud(n=4, sh_degree=1, seed=1)
    aniso = make_cloud(n=5, sh_degree=2, seed=2, anisotropic=True)
    p = Placement.from_euler_degrees(0, 0, 90, scale=3.0)
    asset = Asset(
        [AssetObject(iso, None, Placement(scale=2.0)), AssetObject(aniso, make_motion(1), p)]
    )
    g = asset.gaussians_at([0.0, 0.5, 1.0])
    assert g["means"].shape == (3, 9, 3) and g["sh"].shape == (9, 9, 3) and g["sh_degree"] == 2
    torch.testing.assert_close(g["scales"][:4], iso.scales.detach() * 2.0)
    torch.testing.assert_close(g["scales"][4:], aniso.scales.detach() * 3.0)
    torch.testing.assert_close(g["opacity"], torch.cat([iso.opacity, aniso.opacity]).detach())
    assert (g["sh"][:4, 4:] == 0).all()  # degree-1 object padded with zeros
    torch.testing.assert_close(g["sh"][:4, :4], iso.sh.detach())  # identity rotation: unchanged
    # rotations compose: R_world = R_placement · R_local
    R = quat_to_rotmat(g["quats"][4:].double())
    expected = p.rotation_matrix(dtype=torch.float64) @ quat_to_rotmat(
        aniso.quats.detach().double()
    )
    torch.testing.assert_close(R, expected)
    torch.testing.assert_close(g["quats"][:4], torch.tensor([[1.0, 0, 0, 0]]).expand(4, 4))
    assert asset.num_gaussians == 9 and asset.object_ids().tolist() == [0] * 4 + [1] * 5
    # the cloud at one time carries the same world parameters
    c = asset.cloud_at(0.5)
    torch.testing.assert_close(c.means, g["means"][1])
    torch.testing.assert_close(c.scales, g["scales"])
    assert not c.isotropic


# ---------------------------------------------------------------------------------- SH rotation


def _eval_sh(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour of (K, 3) coefficients seen along (M, 3) directions, through the renderer's own
    SH evaluation when it exists (independent of ayg.asset.sh_basis)."""
    try:
        from ayg.render import eval_sh
    except ImportError:  # pragma: no cover
        eval_sh = None
    degree = math.isqrt(sh.shape[0]) - 1
    if eval_sh is not None:
        try:
            return eval_sh(degree, sh[None].expand(dirs.shape[0], -1, -1), dirs)  # (M, 3)
        except TypeError:
            pass
    return sh_basis(dirs, degree) @ sh  # (M, 3)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sh_rotation_preserves_colour(degree):
    g = torch.Generator().manual_seed(degree)
    K = (degree + 1) ** 2
    sh = torch.randn(K, 3, generator=g, dtype=torch.float64)
    R = quat_to_rotmat(torch.randn(4, generator=g, dtype=torch.float64))
    dirs = torch.nn.functional.normalize(
        torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1
    )
    rotated = rotate_sh(sh[None], R)[0]
    before = _eval_sh(sh, dirs)
    after = _eval_sh(rotated, dirs @ R.T)  # seen from R·d after the rotation
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_sh_degree1_rotates_like_a_vector():
    """Closed form: degree-1 colour = C1·v·d with v = (−f3, −f1, f2); rotating gives R·v."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 1, generator=g, dtype=torch.float64)
    R = euler_matrix(25, 70, -110)
    f2 = rotate_sh(f[None], R)[0]
    v = torch.stack([-f[3, 0], -f[1, 0], f[2, 0]])
    v2 = torch.stack([-f2[3, 0], -f2[1, 0], f2[2, 0]])
    torch.testing.assert_close(v2, R @ v)
    assert f2[0, 0] == f[0, 0]


def test_placed_asset_colour_from_rotated_view():
    """The world SH of a rotated object, seen from R·d, equal the local SH seen from d."""
    cloud = make_cloud(n=3, sh_degree=2)
    p = Placement.from_euler_degrees(15, 30, 45)
    asset = Asset([AssetObject(cloud, None, p)])
    sh_world = asset.attributes()["sh"].double()
    R = p.rotation_matrix(dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=-1)
    for i in range(3):
        torch.testing.assert_close(
            sh_basis(d @ R.T, 2) @ sh_world[i],
            sh_basis(d, 2) @ cloud.sh[i].detach().double(),
            rtol=1e-5,
            atol=1e-5,
        )
