"""Tests of ayg.export (per-frame PLYs, tracks, video, turntable) and of the viewer's camera
conversion."""

from __future__ import annotations

import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from ayg.asset import Asset, AssetObject, Placement
from ayg.cameras import look_at_cameras
from ayg.export import (
    ExportError,
    export_ply_frames,
    export_tracks,
    export_turntable,
    export_video,
    save_png,
)
from ayg.gaussians import GaussianCloud, load_ply
from ayg.viewer import camera_from_viser, image_size
from test_asset import make_cloud, make_motion


def moving_scene() -> Asset:
    """Two placed objects, one anisotropic, both moving."""
    a = AssetObject(
        make_cloud(n=5, seed=1),
        make_motion(2, seed=1),
        Placement.from_euler_degrees(0, 0, 40, scale=0.8),
    )
    b = AssetObject(
        make_cloud(n=4, seed=2, anisotropic=True, sh_degree=1),
        make_motion(1, seed=2),
        Placement.from_euler_degrees(20, 0, 0, translation=(0, 0.3, 0), time_offset=0.25),
    )
    return Asset([a, b], {"prompts": ["test"]})


def test_ply_frames_hold_positions_at_their_times(tmp_path):
    asset = moving_scene()
    times = [0.0, 0.6, 1.5]
    paths = export_ply_frames(asset, tmp_path / "frames", times)
    assert [p.name for p in paths] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == sorted([p.name for p in paths] + ["frames.json"])
    with torch.no_grad():
        pos = asset.positions(times)
        attrs = asset.attributes()
    for i, p in enumerate(paths):
        cloud = load_ply(p)
        torch.testing.assert_close(cloud.means.detach(), pos[i])
        torch.testing.assert_close(cloud.scales.detach(), attrs["scales"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(cloud.opacity.detach(), attrs["opacity"])
        torch.testing.assert_close(cloud.sh.detach(), attrs["sh"], rtol=1e-5, atol=1e-6)
    assert (pos[2] - pos[0]).abs().max() > 1e-3


def test_ply_frames_isotropic_stay_isotropic(tmp_path):
    asset = Asset.from_cloud(make_cloud(n=3), make_motion(1), prompts="x")
    (path,) = export_ply_frames(asset, tmp_path, [0.5])
    cloud = load_ply(path)
    s = cloud.scales.detach()
    torch.testing.assert_close(s, s[:, :1].expand(-1, 3))
    torch.testing.assert_close(
        cloud.rotations.detach(), torch.tensor([[1.0, 0, 0, 0]]).expand(3, 4)
    )


def test_tracks_equal_the_renderer(tmp_path):
    asset = moving_scene()
    cams = look_at_cameras([10.0, 30.0, -5.0], [0.0, 120.0, 250.0], [2.0, 2.5, 1.8], 45.0, 40, 32)
    times = [0.0, 0.7, 1.25]
    path = export_tracks(asset, tmp_path / "tracks.npz", times, cameras=cams, backend="torch")
    data = np.load(path)
    assert set(data.files) == {
        "times", "positions", "object_ids", "uv", "depth", "visible", "K", "viewmats", "width", "height",
    }  # fmt: skip
    C, T, N = 3, 3, asset.num_gaussians
    assert data["positions"].shape == (T, N, 3) and data["uv"].shape == (C, T, N, 2)
    assert data["depth"].shape == (C, T, N) and data["visible"].dtype == bool
    assert int(data["width"]) == 40 and int(data["height"]) == 32
    np.testing.assert_allclose(data["K"], cams.K.numpy())
    np.testing.assert_allclose(data["viewmats"], cams.viewmats.numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(data["positions"], asset.positions(times).numpy())
        for ti, t in enumerate(times):
            out = asset.render(cams, torch.full((C,), t), backend="torch")
            drawn = out.radii > 0  # (C, N): the renderer's means2d is specified where drawn
            assert drawn.any()
            uv = torch.from_numpy(data["uv"][:, ti])
            torch.testing.assert_close(uv[drawn], out.means2d[drawn], rtol=0, atol=1e-4)
    assert data["visible"].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks.npz"]


def test_visibility_false_behind_an_opaque_gaussian(tmp_path):
    # Two Gaussians on the x axis: a big opaque one at +0.3 and a small one at −0.3, and one
    # far off to the side (outside the image of both cameras).
    means = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0], [0.0, 5.0, 0.0]])
    cloud = GaussianCloud(
        means,
        torch.log(torch.tensor([[0.15], [0.05], [0.05]])),
        None,
        torch.tensor([8.0, 8.0, 8.0]),  # opacity ≈ 0.9997 -> α clamped to 0.999
        torch.zeros(3, 3),
        torch.zeros(3, 3, 3),
    )
    asset = Asset.from_cloud(cloud)
    cams = look_at_cameras(0.0, [0.0, 180.0], 3.0, 40.0, 32, 32)  # on +x, then on −x
    export_tracks(asset, tmp_path / "t.npz", [0.0], cameras=cams)
    vis = np.load(tmp_path / "t.npz")["visible"][:, 0]  # (C, N)
    assert vis.tolist() == [[True, False, False], [False, True, False]]


def test_video_has_the_right_frame_count(tmp_path):
    asset = moving_scene()
    path = export_video(
        asset, tmp_path / "v.mp4", frames=6, fps=6, width=32, height=24, backend="torch"
    )
    reader = imageio.get_reader(path)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 6 and frames[0].shape == (24, 32, 3)
    # white background by default, and something drawn in the middle
    assert frames[0][0, 0].min() > 200 and frames[0].min() < 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    # +faststart: the top-level moov box (the index) comes before mdat (the frames)
    data = path.read_bytes()
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size < 8:
            break
        pos += size
    assert "moov" in boxes and "mdat" in boxes, boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


def test_turntable_and_png(tmp_path):
    asset = moving_scene()
    path = export_turntable(
        asset, tmp_path / "tt.png", times=[0.0, 1.0], n_views=3, width=16, height=12
    )
    img = imageio.imread(path)
    assert img.shape == (24, 48, 3)
    save_png(torch.rand(3, 5, 7), tmp_path / "x.png")
    assert imageio.imread(tmp_path / "x.png").shape == (5, 7, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 31}, "even width and height"),
        ({"frames": 0}, "frames must be a positive integer"),
        ({"fps": 2.5}, "fps must be a positive integer"),
        ({"fov": 200.0}, "fov must be in"),
        ({"background": (1, 2)}, "background must be 3 numbers"),
    ],
)
def test_video_bad_arguments(tmp_path, kwargs, message):
    asset = Asset.from_cloud(make_cloud(n=2))
    with pytest.raises(ExportError) as e:
        export_video(
            asset, tmp_path / "v.mp4", **{"frames": 2, "width": 16, "height": 16, **kwargs}
        )
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_other_bad_arguments(tmp_path):
    asset = Asset.from_cloud(make_cloud(n=2))
    with pytest.raises(ExportError, match="must end in .mp4"):
        export_video(asset, tmp_path / "v.gif")
    with pytest.raises(ExportError, match="finite numbers >= 0"):
        export_tracks(asset, tmp_path / "t.npz", [-1.0])
    with pytest.raises(ExportError, match="must not be empty"):
        export_ply_frames(asset, tmp_path / "f", [])
    with pytest.raises(ExportError, match="must end in .png"):
        export_turntable(asset, tmp_path / "t.jpg", [0.0])
    with pytest.raises(ExportError, match="n_views"):
        export_turntable(asset, tmp_path / "t.png", [0.0], n_views=0)


# ------------------------------------------------------------------------------------ viewer


def test_camera_from_viser_matches_look_at():
    """viser reports OpenCV camera-to-world rotations: a look-at camera round-trips."""
    ref = look_at_cameras(25.0, 70.0, 2.5, 50.0, 64, 48)
    R = ref.c2w[0, :3, :3].double()
    # rotation matrix -> wxyz (R is a proper rotation with trace > -1 here)
    w = math.sqrt(max(0.0, 1.0 + R.trace().item())) / 2.0
    q = [
        w,
        (R[2, 1] - R[1, 2]).item() / (4 * w),
        (R[0, 2] - R[2, 0]).item() / (4 * w),
        (R[1, 0] - R[0, 1]).item() / (4 * w),
    ]
    cams = camera_from_viser(ref.positions[0].tolist(), q, math.radians(50.0), 64, 48)
    torch.testing.assert_close(cams.c2w, ref.c2w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cams.K, ref.K)
    with pytest.raises(ValueError, match="fov"):
        camera_from_viser([0, 0, 1], [1, 0, 0, 0], 50.0, 64, 48)  # degrees by mistake
    assert image_size(2.0, 512) == (512, 256) and image_size(0.5, 512) == (256, 512)


def test_viewer_without_viser_says_how_to_install(monkeypatch):
    import builtins

    from ayg import viewer

    real_import = builtins.__import__

    def no_viser(name, *args, **kwargs):
        if name == "viser":
            raise ImportError("No module named 'viser'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_viser)
    with pytest.raises(viewer.ViewerError, match=r'pip install "ayg\[viewer\]"'):
        viewer.view(Asset.from_cloud(make_cloud(n=2)))
