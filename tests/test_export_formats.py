"""Round trips of the frame-sequence formats (``ayg export --format ply-frames|splat|
ply-compressed|spz``): every frame read back by the library that wrote it and, for PLY and
.splat, by a second reader, against the asset at that time turned by an explicit matrix.

Stated tolerances (from each format's quantisation):
  ply-frames      float32: positions 1e-6, log-scales 1e-6, colours 1e-6, opacities 1e-6
  splat           positions and scales float32 (1e-6); colour and opacity one uint8 step
                  (1/255, the writer truncates); quaternions uint8 (covariance 2 %)
  ply-compressed  positions 11/10/11 bits of the chunk's box (1e-3 here), log-scales 0.01,
                  colours 0.01, opacities 1/255
  spz             positions 2^-12 (2.5e-4), log-scales 1/16 (0.035), colours 0.005,
                  opacities 1/255
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ayg.asset import Asset
from ayg.export import (
    FRAME_FORMATS,
    UP_ROTATION,
    ExportError,
    export_frames,
)
from ayg.gaussians import C0, load_ply
from test_export import moving_scene

gsply = pytest.importorskip("gsply")
plyfile = pytest.importorskip("plyfile")
pytest.importorskip("gsplat")

TIMES = [0.0, 0.6, 1.5]


def reference(asset: Asset, g: float, up: str) -> dict[str, np.ndarray]:
    """What a frame must hold, computed without the export code: world positions and
    covariances at time g turned by the stated matrix; colour and opacity do not turn."""
    R = torch.tensor(UP_ROTATION[up], dtype=torch.float64)
    with torch.no_grad():
        pos = asset.positions([g])[0].double() @ R.T  # (N, 3)
        a = asset.attributes()
        s = a["scales"].double()  # (N, 3)
        if a["quats"] is None:
            rot = torch.eye(3, dtype=torch.float64).expand(len(s), 3, 3)
        else:
            from ayg.gaussians import quat_to_rotmat

            rot = quat_to_rotmat(a["quats"].double())
        cov = rot @ torch.diag_embed(s * s) @ rot.transpose(1, 2)
        cov = R @ cov @ R.T
        rgb = (0.5 + C0 * a["sh"][:, 0].double()).clamp(0.0, 1.0)
    return {
        "means": pos.numpy(),
        "log_scales": torch.log(s).numpy(),
        "cov": cov.numpy(),
        "rgb": rgb.numpy(),
        "opacity": a["opacity"].double().numpy(),
    }


def covariance(scales_linear: np.ndarray, quats_wxyz: np.ndarray) -> np.ndarray:
    q = quats_wxyz / np.linalg.norm(quats_wxyz, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=1,
    ).reshape(-1, 3, 3)  # fmt: skip
    return R @ (scales_linear[:, :, None] ** 2 * np.eye(3)) @ R.transpose(0, 2, 1)


def match(ref_means: np.ndarray, got_means: np.ndarray) -> np.ndarray:
    """Index into the reference of each read-back Gaussian (writers that sort reorder)."""
    d = np.linalg.norm(got_means[:, None] - ref_means[None], axis=-1)  # (N, N)
    idx = d.argmin(axis=1)
    assert sorted(idx.tolist()) == list(range(len(ref_means))), "not a one-to-one match"
    return idx


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def check(ref, got, tol, order_kept: bool) -> None:
    idx = np.arange(len(ref["means"])) if order_kept else match(ref["means"], got["means"])
    for key in ("means", "log_scales", "rgb", "opacity"):
        if key in got:
            err = np.abs(np.asarray(got[key], np.float64) - ref[key][idx]).max()
            assert err <= tol[key], f"{key}: error {err:.3g} > {tol[key]}"
    if "cov" in got:
        scale = np.abs(ref["cov"][idx]).max(axis=(1, 2), keepdims=True)
        err = (np.abs(got["cov"] - ref["cov"][idx]) / scale).max()
        assert err <= tol["cov"], f"covariance: relative error {err:.3g} > {tol['cov']}"


def from_gsdata(d) -> dict[str, np.ndarray]:
    """gsply's GSData (Inria parameters) -> comparable quantities."""
    log_s = np.asarray(d.scales, np.float64)
    return {
        "means": np.asarray(d.means, np.float64),
        "log_scales": log_s,
        "rgb": np.clip(0.5 + C0 * np.asarray(d.sh0, np.float64), 0.0, 1.0),
        "opacity": sigmoid(d.opacities),
        "cov": covariance(np.exp(log_s), np.asarray(d.quats, np.float64)),
    }


def read_splat_numpy(path) -> dict[str, np.ndarray]:
    """The antimatter15 .splat record read with numpy alone: position 3 × float32, scale
    3 × float32 (linear), RGBA 4 × uint8, rotation 4 × uint8 (wxyz, q·128 + 128)."""
    rec = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    raw = np.fromfile(path, dtype=rec)
    q = (raw["rot"].astype(np.float64) - 128.0) / 128.0
    return {
        "means": raw["pos"].astype(np.float64),
        "log_scales": np.log(raw["scale"].astype(np.float64)),
        "rgb": raw["rgba"][:, :3] / 255.0,
        "opacity": raw["rgba"][:, 3] / 255.0,
        "cov": covariance(raw["scale"].astype(np.float64), q),
    }


def read_plyfile(path) -> dict[str, np.ndarray]:
    v = plyfile.PlyData.read(str(path))["vertex"]
    log_s = np.stack([v[f"scale_{i}"] for i in range(3)], axis=1).astype(np.float64)
    quats = np.stack([v[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float64)
    return {
        "means": np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64),
        "log_scales": log_s,
        "rgb": np.clip(
            0.5 + C0 * np.stack([v[f"f_dc_{i}"] for i in range(3)], axis=1).astype(np.float64),
            0.0,
            1.0,
        ),
        "opacity": sigmoid(v["opacity"]),
        "cov": covariance(np.exp(log_s), quats),
    }


def read_compressed_positions_plyfile(path) -> np.ndarray:
    """Positions of a PlayCanvas compressed PLY decoded from plyfile's raw elements: each
    vertex's packed_position holds x, y, z in 11/10/11 bits of its chunk's [min, max] box
    (256 vertices per chunk)."""
    ply = plyfile.PlyData.read(str(path))
    chunk, vert = ply["chunk"], ply["vertex"]
    lo = np.stack([chunk["min_x"], chunk["min_y"], chunk["min_z"]], axis=1).astype(np.float64)
    hi = np.stack([chunk["max_x"], chunk["max_y"], chunk["max_z"]], axis=1).astype(np.float64)
    p = vert["packed_position"].astype(np.uint64)
    unorm = np.stack(
        [(p >> 21) / 2047.0, ((p >> 11) & 0x3FF) / 1023.0, (p & 0x7FF) / 2047.0], axis=1
    )
    c = np.arange(len(p)) // 256
    return lo[c] + unorm * (hi[c] - lo[c])


EXACT = dict(means=1e-6, log_scales=1e-5, rgb=1e-6, opacity=1e-6, cov=1e-4)
TOLERANCES = {
    "ply-frames": EXACT,
    "splat": dict(
        means=1e-6, log_scales=1e-5, rgb=1.0 / 255 + 1e-9, opacity=1.0 / 255 + 1e-9, cov=0.02
    ),  # fmt: skip
    "ply-compressed": dict(means=1e-3, log_scales=0.01, rgb=0.01, opacity=1.0 / 255, cov=0.05),
    "spz": dict(means=2.5e-4, log_scales=0.035, rgb=0.005, opacity=1.0 / 255, cov=0.08),
}


@pytest.mark.parametrize("fmt", FRAME_FORMATS)
@pytest.mark.parametrize("up", ["y", "z"])
def test_frames_round_trip(tmp_path, fmt, up):
    asset = moving_scene()
    manifest = export_frames(asset, tmp_path, TIMES, fmt, up=up, fps=8)
    on_disk = json.loads((tmp_path / "frames.json").read_text())
    assert on_disk == manifest
    assert manifest["times"] == pytest.approx(TIMES) and manifest["fps"] == 8.0
    assert manifest["coordinates"]["from_ayg_world"] == [list(r) for r in UP_ROTATION[up]]
    assert [o["count"] for o in manifest["objects"]] == [o.num_gaussians for o in asset.objects]
    assert manifest["objects"][1]["placement"]["time_offset"] == 0.25
    assert manifest["bytes"] == sum((tmp_path / f).stat().st_size for f in manifest["files"])
    assert manifest["bytes_per_second"] == pytest.approx(manifest["bytes"] / (len(TIMES) / 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manifest["files"] + ["frames.json"])
    tol, kept = TOLERANCES[fmt], manifest["keeps_order"]
    for g, name in zip(TIMES, manifest["files"], strict=True):
        path = tmp_path / name
        ref = reference(asset, g, up)
        if fmt == "ply-frames":
            cloud = load_ply(path)
            check(ref, {"means": cloud.means.detach().double().numpy()}, tol, kept)
            check(ref, read_plyfile(path), tol, kept)
            check(ref, from_gsdata(gsply.plyread(str(path))), tol, kept)
        elif fmt == "splat":
            check(ref, read_splat_numpy(path), tol, kept)
        elif fmt == "ply-compressed":
            check(ref, from_gsdata(gsply.plyread(str(path))), tol, kept)
            check(ref, {"means": read_compressed_positions_plyfile(path)}, tol, kept)
        else:
            check(ref, from_gsdata(gsply.read_spz(str(path))), tol, kept)
    # the frames move: the object placed with a time offset of 0.25 has moved by t = 1.5
    first, last = reference(asset, TIMES[0], up), reference(asset, TIMES[-1], up)
    assert np.abs(last["means"] - first["means"]).max() > 1e-3


def test_up_y_stands_objects_on_minus_y():
    """A point above the origin in ayg's world (z > 0) is at −y in an up=y file."""
    R = np.array(UP_ROTATION["y"])
    np.testing.assert_allclose(R @ [0.0, 0.0, 1.0], [0.0, -1.0, 0.0])
    np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_frames_bad_arguments(tmp_path):
    asset = moving_scene()
    with pytest.raises(ExportError, match="format must be one of"):
        export_frames(asset, tmp_path / "a", [0.0], "gltf")
    with pytest.raises(ExportError, match="up must be one of y, z"):
        export_frames(asset, tmp_path / "b", [0.0], "splat", up="x")
    with pytest.raises(ExportError, match="fps must be a positive number"):
        export_frames(asset, tmp_path / "c", [0.0], "splat", fps=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is not a directory"):
        export_frames(asset, tmp_path / "file", [0.0], "spz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_frames_and_web(tmp_path, capsys):
    from ayg.cli import main

    path = tmp_path / "a.ayg"
    moving_scene().save(path)
    rc = main(["export", str(path), "--format", "spz", "--out", str(tmp_path / "f"),
               "--frames", "3", "--up", "z", "--fps", "6"])  # fmt: skip
    assert rc == 0 and "wrote 3 spz frames" in capsys.readouterr().out
    m = json.loads((tmp_path / "f" / "frames.json").read_text())
    assert m["coordinates"]["up"] == "z" and m["fps"] == 6.0 and len(m["files"]) == 3
    with pytest.raises(SystemExit) as e:
        main(["export", str(path), "--format", "spz", "--out", str(tmp_path / "g"), "--up", "x"])
    assert e.value.code == 2 and not (tmp_path / "g").exists()
    pytest.importorskip("viser")
    rc = main(["export", str(path), "--format", "web", "--out", str(tmp_path / "w"),
               "--fps", "4", "--seconds", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "kB per second" in out and "5 frames" in out, out
    html = (tmp_path / "w" / "index.html").read_text()
    assert "__VISER_EMBED_DATA__" in html and sorted(
        p.name for p in (tmp_path / "w").iterdir()
    ) == ["index.html"]
