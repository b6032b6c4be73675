"""Tests of ayg.gaussians: C.1 initialisation, densification / pruning with the Adam state,
learning rates, the Inria PLY format, and the bundled example."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ayg.examples import example_cloud, example_ply_path
from ayg.gaussians import (
    C0,
    DensifyStrategy,
    GaussianCloud,
    GaussianLR,
    PlyError,
    load_ply,
    make_optimizer,
    ply_field_names,
    save_ply,
    update_learning_rate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cloud(n: int, sh_degree: int, isotropic: bool, seed: int = 0) -> GaussianCloud:
    g = gen(seed)
    k = (sh_degree + 1) ** 2 - 1
    return GaussianCloud(
        torch.randn(n, 3, generator=g) * 0.3,
        torch.randn(n, 1 if isotropic else 3, generator=g) - 4.0,
        None if isotropic else torch.randn(n, 4, generator=g),
        torch.randn(n, generator=g),
        torch.randn(n, 3, generator=g),
        torch.randn(n, k, 3, generator=g),
    )


# ----------------------------------------------------------------------------- write PLY by hand


def write_ply(
    path: Path, columns: dict[str, np.ndarray], types: dict[str, str] | None = None, fmt="binary"
) -> None:
    """A plain PLY writer independent of ayg: one vertex element, given property types."""
    types = types or {}
    names = list(columns)
    n = len(next(iter(columns.values())))
    np_types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4"}
    head = ["ply", "format " + ("ascii" if fmt == "ascii" else "binary_little_endian") + " 1.0"]
    head += ["comment hand written", f"element vertex {n}"]
    head += [f"property {types.get(k, 'float')} {k}" for k in names] + ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode())
        if fmt == "ascii":
            for i in range(n):
                f.write((" ".join(repr(float(columns[k][i])) for k in names) + "\n").encode())
        else:
            dtype = np.dtype([(k, np_types[types.get(k, "float")]) for k in names])
            rec = np.empty(n, dtype)
            for k in names:
                rec[k] = columns[k]
            f.write(rec.tobytes())


def read_ply_columns(path: Path) -> dict[str, np.ndarray]:
    """Minimal reader of the binary float32 files that save_ply writes (independent of ayg)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    names = [ln.split()[2] for ln in raw[:end].decode().splitlines() if ln.startswith("property")]
    data = np.frombuffer(raw[end:], dtype="<f4").reshape(-1, len(names))
    return {k: data[:, i] for i, k in enumerate(names)}


# ----------------------------------------------------------------------------- init (C.1)


def test_init_sphere_statistics():
    cloud = GaussianCloud.init_sphere(generator=gen(0))
    n = cloud.num
    assert n == 1000 and cloud.isotropic and cloud.quats is None and cloud.sh_degree == 2
    means = cloud.means.detach().double().numpy()
    r = np.linalg.norm(means, axis=1)
    assert r.max() <= 0.3 + 1e-6
    assert 0.08 < (r < 0.15).mean() < 0.17  # uniform in volume: (1/2)^3 = 0.125
    assert abs(means.mean(0)).max() < 0.03
    # brute-force 3-NN scales (Kerbl et al.)
    d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    expected = np.log(np.sqrt(np.sort(d2, axis=1)[:, :3].mean(1)))
    assert cloud.log_scales.shape == (n, 1)
    np.testing.assert_allclose(cloud.log_scales[:, 0].detach().numpy(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(cloud.opacity.detach(), torch.full((n,), 0.1))
    rgb = 0.5 + C0 * cloud.sh_dc.detach()
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.2
    assert cloud.sh_rest.shape == (n, 8, 3) and (cloud.sh_rest == 0).all()
    # activated views
    assert cloud.scales.shape == (n, 3) and cloud.sh.shape == (n, 9, 3)
    assert (cloud.rotations == torch.tensor([1.0, 0, 0, 0])).all()
    # a seed reproduces the cloud
    again = GaussianCloud.init_sphere(generator=gen(0))
    for k, v in cloud.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_copies_and_state_dict():
    cloud = random_cloud(20, 1, isotropic=False)
    sd = cloud.state_dict()
    assert set(sd) == {"means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"}
    back = GaussianCloud.from_state_dict({**sd, "sh_degree": 1})
    assert back.sh_degree == 1 and not back.isotropic
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k])
    with pytest.raises(ValueError, match="sh_degree"):
        GaussianCloud.from_state_dict({**sd, "sh_degree": 2})
    with pytest.raises(ValueError, match="missing"):
        GaussianCloud.from_state_dict({"means": sd["means"]})
    frozen = cloud.detached()
    assert not frozen.means.requires_grad and cloud.means.requires_grad
    twin = cloud.clone()
    assert twin.means is not cloud.means and torch.equal(twin.means, cloud.means)
    mask = torch.arange(20) % 2 == 0
    sub = cloud.subset(mask)
    assert sub.num == 10 and torch.equal(sub.quats, cloud.quats[mask])
    assert torch.equal(cloud.subset(torch.tensor([3, 1])).means, cloud.means[[3, 1]])
    iso = random_cloud(5, 1, isotropic=True)
    both = GaussianCloud.cat([iso, cloud])
    assert both.num == 25 and not both.isotropic and both.log_scales.shape == (25, 3)
    torch.testing.assert_close(both.scales[:5], iso.scales)
    with pytest.raises(ValueError, match="log_scales"):
        GaussianCloud(
            sd["means"], sd["log_scales"][:, :2], None, sd["opacity_logits"], sd["sh_dc"], None
        )


# ----------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
@pytest.mark.parametrize("isotropic", [True, False])
def test_ply_round_trip_is_exact(tmp_path, sh_degree, isotropic):
    cloud = random_cloud(50, sh_degree, isotropic, seed=sh_degree)
    path = save_ply(cloud, tmp_path / "sub" / "c.ply")
    assert [p.name for p in path.parent.iterdir()] == ["c.ply"]  # no temp file left behind
    back = load_ply(path)
    assert back.sh_degree == sh_degree and back.isotropic == isotropic
    assert (back.quats is None) == isotropic
    for k, v in cloud.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    cols = read_ply_columns(path)
    assert list(cols) == ply_field_names(sh_degree)
    if isotropic:
        s = cloud.log_scales[:, 0].detach().numpy()
        for i in range(3):
            np.testing.assert_array_equal(cols[f"scale_{i}"], s)
        np.testing.assert_array_equal(cols["rot_0"], 1.0)
        np.testing.assert_array_equal(cols["rot_3"], 0.0)


def test_f_rest_is_channel_major(tmp_path):
    n, k = 4, 8  # degree 2
    sh_rest = torch.zeros(n, k, 3)
    for j in range(k):
        for c in range(3):
            sh_rest[:, j, c] = 100 * c + j  # coefficient j of channel c
    cloud = GaussianCloud(
        torch.zeros(n, 3), torch.zeros(n, 1), None, torch.zeros(n), torch.zeros(n, 3), sh_rest
    )
    cols = read_ply_columns(save_ply(cloud, tmp_path / "a.ply"))
    for c in range(3):
        for j in range(k):
            np.testing.assert_array_equal(cols[f"f_rest_{c * k + j}"], 100 * c + j)
    # and a hand-written file reads back the same way
    fields = {"x": np.zeros(n), "y": np.zeros(n), "z": np.zeros(n)}
    fields |= {f"f_dc_{i}": np.zeros(n) for i in range(3)}
    fields |= {f"f_rest_{c * k + j}": np.full(n, 100.0 * c + j) for c in range(3) for j in range(k)}
    fields |= {
        "opacity": np.zeros(n),
        "scale_0": np.zeros(n),
        "scale_1": np.zeros(n),
        "scale_2": np.zeros(n),
    }
    write_ply(tmp_path / "b.ply", fields)
    assert torch.equal(load_ply(tmp_path / "b.ply").sh_rest, sh_rest)


def foreign_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "x": rng.normal(size=n),
        "y": rng.normal(size=n),
        "z": rng.normal(size=n),
        "nx": np.zeros(n),
        "ny": np.zeros(n),
        "nz": np.zeros(n),
    }
    cols |= {f"f_dc_{i}": rng.normal(size=n) for i in range(3)}
    cols |= {f"f_rest_{i}": rng.normal(size=n) for i in range(9)}  # degree 1
    cols |= {"opacity": rng.normal(size=n)}
    cols |= {f"scale_{i}": rng.normal(size=n) - 4 for i in range(3)}
    cols |= {f"rot_{i}": rng.normal(size=n) for i in range(4)}
    return cols


def check_foreign(cloud: GaussianCloud, cols: dict[str, np.ndarray], atol: float) -> None:
    def close(t, a):
        np.testing.assert_allclose(t.detach().numpy(), np.asarray(a, np.float64), rtol=0, atol=atol)

    assert not cloud.isotropic and cloud.sh_degree == 1
    close(cloud.means, np.stack([cols["x"], cols["y"], cols["z"]], 1))
    close(cloud.sh_dc, np.stack([cols[f"f_dc_{i}"] for i in range(3)], 1))
    close(cloud.log_scales, np.stack([cols[f"scale_{i}"] for i in range(3)], 1))
    close(cloud.quats, np.stack([cols[f"rot_{i}"] for i in range(4)], 1))
    close(cloud.opacity_logits, cols["opacity"])
    close(cloud.sh_rest[:, 2, 1], cols["f_rest_5"])  # coefficient 2 of green: 1·3 + 2
    q = np.stack([cols[f"rot_{i}"] for i in range(4)], 1)
    close(cloud.rotations, q / np.linalg.norm(q, axis=1, keepdims=True))


def test_foreign_anisotropic_binary_ply_with_doubles_and_extra_fields(tmp_path):
    cols = foreign_columns(30)
    # other order, doubles for the positions, extra uchar colours that we ignore
    order = ["opacity", "x", "y", "z", "red", "green", "blue"] + [
        k for k in cols if k not in ("opacity", "x", "y", "z")
    ]
    cols |= {"red": np.full(30, 255), "green": np.zeros(30), "blue": np.ones(30)}
    types = {
        "x": "double",
        "y": "double",
        "z": "double",
        "red": "uchar",
        "green": "uchar",
        "blue": "uchar",
    }
    write_ply(tmp_path / "f.ply", {k: cols[k] for k in order}, types)
    check_foreign(load_ply(tmp_path / "f.ply"), cols, atol=1e-6)


def test_foreign_ascii_ply(tmp_path):
    cols = foreign_columns(12, seed=1)
    write_ply(tmp_path / "a.ply", cols, fmt="ascii")
    check_foreign(load_ply(tmp_path / "a.ply"), cols, atol=1e-6)
    # equal scales and identity rotations load as isotropic
    cols |= {"scale_1": cols["scale_0"], "scale_2": cols["scale_0"], "rot_0": np.full(12, 2.0)}
    cols |= {"rot_1": np.zeros(12), "rot_2": np.zeros(12), "rot_3": np.zeros(12)}
    write_ply(tmp_path / "b.ply", cols, fmt="ascii")
    iso = load_ply(tmp_path / "b.ply")
    assert iso.isotropic and iso.quats is None and iso.log_scales.shape == (12, 1)


def test_ply_errors(tmp_path):
    with pytest.raises(PlyError, match="no such file"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "bad.ply").write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(PlyError, match="not a PLY file"):
        load_ply(tmp_path / "bad.ply")
    mesh = {k: np.zeros(3) for k in ("x", "y", "z")} | {
        k: np.full(3, 200) for k in ("red", "green", "blue")
    }
    write_ply(tmp_path / "mesh.ply", mesh, {"red": "uchar", "green": "uchar", "blue": "uchar"})
    with pytest.raises(PlyError, match=r"missing f_dc_0, f_dc_1, f_dc_2, opacity, scale_0") as e:
        load_ply(tmp_path / "mesh.ply")
    msg = str(e.value)
    assert "\n" not in msg and "red" in msg and "Inria" in msg
    good = save_ply(random_cloud(10, 1, isotropic=True), tmp_path / "good.ply").read_bytes()
    (tmp_path / "short.ply").write_bytes(good[:-7])
    with pytest.raises(PlyError, match="truncated"):
        load_ply(tmp_path / "short.ply")
    (tmp_path / "nohead.ply").write_bytes(good[:40])
    with pytest.raises(PlyError, match="end_header"):
        load_ply(tmp_path / "nohead.ply")
    cols = foreign_columns(5)
    cols["scale_1"][2] = np.nan
    write_ply(tmp_path / "nan.ply", cols)
    with pytest.raises(PlyError, match="NaN"):
        load_ply(tmp_path / "nan.ply")
    cols = foreign_columns(5)
    del cols["f_rest_8"]
    write_ply(tmp_path / "rest.ply", cols)
    with pytest.raises(PlyError, match="f_rest"):
        load_ply(tmp_path / "rest.ply")
    write_ply(tmp_path / "asc.ply", foreign_columns(5), fmt="ascii")
    text = (tmp_path / "asc.ply").read_bytes()
    (tmp_path / "asc.ply").write_bytes(text[: text.rindex(b"\n", 0, -1)])  # drop the last line
    with pytest.raises(PlyError, match="truncated"):
        load_ply(tmp_path / "asc.ply")


# ----------------------------------------------------------------------------- learning rates


def test_lr_schedule():
    lr = GaussianLR()
    assert lr.position_at(0) == pytest.approx(1e-3)
    assert lr.position_at(500) == pytest.approx(2e-4)
    assert lr.position_at(5000) == pytest.approx(2e-4)
    assert lr.position_at(250) == pytest.approx(math.sqrt(1e-3 * 2e-4))  # log-linear
    opt = make_optimizer(random_cloud(5, 2, isotropic=False))
    groups = {g["name"]: g for g in opt.param_groups}
    assert all(len(g["params"]) == 1 for g in opt.param_groups) and opt.defaults["eps"] == 1e-15
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(
        {
            "means": 1e-3,
            "log_scales": 0.005,
            "quats": 0.001,
            "opacity_logits": 0.05,
            "sh_dc": 0.01,
            "sh_rest": 0.0005,
        }
    )
    fine = GaussianLR(scale=0.2)
    assert update_learning_rate(opt, fine, 500) == pytest.approx(4e-5)
    assert groups["means"]["lr"] == pytest.approx(4e-5) and groups["sh_dc"]["lr"] == pytest.approx(
        0.002
    )
    assert "sh_rest" not in {
        g["name"] for g in make_optimizer(random_cloud(5, 0, True)).param_groups
    }


# ----------------------------------------------------------------------------- densification


def densify_setup(n=8, prune_one=False):
    """Gaussians 0..3 small (scale 0.001), 4..7 large (0.05); all opacity 0.5 (one 0.001)."""
    log_scales = torch.tensor([math.log(0.001)] * (n // 2) + [math.log(0.05)] * (n - n // 2))[
        :, None
    ]
    opacity = torch.full((n,), 0.0)
    if prune_one:
        opacity[1] = math.log(0.001 / 0.999)
    k = 8
    cloud = GaussianCloud(
        torch.randn(n, 3, generator=gen(1)) * 0.2,
        log_scales,
        None,
        opacity,
        torch.randn(n, 3, generator=gen(2)),
        torch.randn(n, k, 3, generator=gen(3)),
    )
    opt = make_optimizer(cloud)
    adam_step(cloud, opt)  # populate the Adam state
    return cloud, opt


def adam_step(cloud, opt):
    opt.zero_grad()
    loss = sum(
        (p * (1 + torch.arange(p.numel()).reshape(p.shape) % 3)).sum() for p in cloud.parameters()
    )
    (loss + (cloud.means**2).sum()).backward()
    opt.step()


def screen_info(n, hot, width=64, height=32, cameras=2, visible=None):
    """A means2d leaf whose NDC gradient norm is 0.01 for Gaussians in ``hot``, 1e-4 otherwise."""
    means2d = torch.zeros(cameras, n, 2, requires_grad=True)
    radii = torch.ones(cameras, n, dtype=torch.int32) if visible is None else visible
    info = {"means2d": means2d, "radii": radii, "width": width, "height": height}
    DensifyStrategy().step_pre_backward(info)
    g = torch.full((n,), 1e-4)
    g[hot] = 0.01
    # NDC gradient = pixel gradient · (W/2, H/2): split the norm over x and y
    coef = torch.stack([0.6 * g / (width / 2), 0.8 * g / (height / 2)], -1)  # (N, 2)
    (means2d * coef).sum().backward()
    return info


def test_gradient_statistics_are_ndc_means_over_visible_views():
    cloud, opt = densify_setup()
    strategy = DensifyStrategy(start=10)
    state = strategy.initialize_state()
    visible = torch.ones(2, 8, dtype=torch.int32)
    visible[1, 3] = 0  # Gaussian 3 seen once
    strategy.step_post_backward(cloud, opt, state, 0, screen_info(8, [3], visible=visible))
    strategy.step_post_backward(cloud, opt, state, 1, screen_info(8, [3]))
    assert state["count"].tolist() == [4, 4, 4, 3, 4, 4, 4, 4]
    avg = state["grad2d"] / state["count"]
    torch.testing.assert_close(avg[3], torch.tensor(0.01))
    torch.testing.assert_close(avg[0], torch.tensor(1e-4))


def test_clone_small_split_large_with_adam_state():
    cloud, opt = densify_setup()
    before = {k: p.detach().clone() for k, p in cloud.named_parameters().items()}
    moments = {k: opt.state[p]["exp_avg"].clone() for k, p in cloud.named_parameters().items()}
    strategy = DensifyStrategy(prune_opacity=0.0)
    state = strategy.initialize_state()
    event = strategy.step_post_backward(cloud, opt, state, 500, screen_info(8, [0, 2, 5]))
    assert event == {"cloned": 2, "split": 1, "pruned": 0, "reset": 0, "num": 11}
    assert cloud.num == 11  # 8 + 2 clones + 2 children - 1 parent
    keep = [0, 1, 2, 3, 4, 6, 7]
    for group in opt.param_groups:  # the optimizer holds the cloud's new parameters
        name = group["name"]
        p = getattr(cloud, name)
        assert group["params"][0] is p and p.shape[0] == 11
        st = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert st[key].shape == p.shape
            assert (st[key][7:] == 0).all()
        assert torch.equal(st["exp_avg"][:7], moments[name][keep])
        assert torch.equal(p.detach()[:7], before[name][keep])
    # clones are exact copies of 0 and 2
    for name, p in cloud.named_parameters().items():
        assert torch.equal(p.detach()[7:9], before[name][[0, 2]])
    # the children of 5: scales / 1.6, colours copied, centres near the parent
    torch.testing.assert_close(
        cloud.log_scales[9:, 0].detach(), before["log_scales"][[5, 5], 0] - math.log(1.6)
    )
    assert torch.equal(cloud.sh_rest[9].detach(), before["sh_rest"][5])
    assert torch.equal(cloud.opacity_logits[9].detach(), before["opacity_logits"][5])
    offset = (cloud.means[9] - before["means"][5]).detach()
    assert 0 < offset.norm() < 0.05 * 5
    assert state["grad2d"].shape == (11,) and (state["grad2d"] == 0).all()
    # training continues: Adam steps move every Gaussian, including the new ones
    snap = cloud.means.detach().clone()
    adam_step(cloud, opt)
    adam_step(cloud, opt)
    assert ((cloud.means.detach() - snap).abs().sum(1) > 0).all()
    # and resumes from a checkpoint of the edited cloud and optimizer
    resumed = GaussianCloud.from_state_dict(cloud.state_dict())
    opt2 = make_optimizer(resumed)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[resumed.means]["exp_avg"], opt.state[cloud.means]["exp_avg"])
    adam_step(resumed, opt2)


def test_split_anisotropic_samples_from_the_rotated_gaussian():
    n = 2000
    cloud = GaussianCloud(
        torch.zeros(1, 3),
        torch.log(torch.tensor([[0.3, 0.02, 0.02]])),
        torch.tensor(
            [[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]]
        ),  # 90° about z: x -> y
        torch.zeros(1),
        torch.zeros(1, 3),
        None,
    )
    strategy = DensifyStrategy(n_split=n, prune_opacity=0.0, start=0)
    state = strategy.initialize_state()
    state["grad2d"], state["count"] = torch.ones(1), torch.ones(1)
    assert strategy.densify(cloud, None, state, gen(0)) == (0, 1)
    std = cloud.means.detach().std(0)
    assert cloud.num == n and 0.27 < std[1] < 0.33 and std[0] < 0.03 and std[2] < 0.03
    torch.testing.assert_close(cloud.scales[0], torch.tensor([0.3, 0.02, 0.02]) / (0.8 * n))


def test_prune_and_predicted_count():
    cloud, opt = densify_setup(prune_one=True)
    strategy = DensifyStrategy()
    state = strategy.initialize_state()
    # step 499: statistics only; step 500: densify (0 cloned, 4, 5 split) then prune 1
    assert (
        strategy.step_post_backward(cloud, opt, state, 499, screen_info(8, [0, 4, 5]))["num"] == 8
    )
    event = strategy.step_post_backward(cloud, opt, state, 500, screen_info(8, [0, 4, 5]))
    assert (event["cloned"], event["split"], event["pruned"]) == (1, 2, 1)
    assert cloud.num == 8 + 1 + 2 - 1
    assert (cloud.opacity > 0.005).all()
    assert all(g["params"][0] is getattr(cloud, g["name"]) for g in opt.param_groups)
    # off-schedule steps do not edit; 1500 does (and prunes nothing now)
    assert strategy.step_post_backward(cloud, opt, state, 1000, screen_info(10, [0]))["num"] == 10
    assert strategy.step_post_backward(cloud, opt, state, 1500, screen_info(10, [0]))["cloned"] == 1
    adam_step(cloud, opt)


def test_cap_on_the_count():
    cloud, opt = densify_setup(prune_one=True)
    strategy = DensifyStrategy(max_gaussians=10)
    state = strategy.initialize_state()
    hot = [0, 2, 3, 4, 5]
    event = strategy.step_post_backward(cloud, opt, state, 500, screen_info(8, hot))
    assert event["cloned"] + event["split"] == 2 and event["pruned"] == 1 and cloud.num == 9
    # at the cap: no densification, but pruning still happens
    cloud, opt = densify_setup(prune_one=True)
    strategy = DensifyStrategy(max_gaussians=8)
    event = strategy.step_post_backward(
        cloud, opt, strategy.initialize_state(), 500, screen_info(8, hot)
    )
    assert (event["cloned"], event["split"], event["pruned"], cloud.num) == (0, 0, 1, 7)
    # stop: nothing happens from `stop` on
    cloud, opt = densify_setup(prune_one=True)
    strategy = DensifyStrategy(stop=500)
    event = strategy.step_post_backward(
        cloud, opt, strategy.initialize_state(), 500, screen_info(8, hot)
    )
    assert cloud.num == 8 and event["pruned"] == 0


def test_opacity_reset():
    cloud, opt = densify_setup(prune_one=True)
    before = cloud.opacity.detach().clone()
    means_moment = opt.state[cloud.means]["exp_avg"].clone()
    strategy = DensifyStrategy()
    event = strategy.step_post_backward(
        cloud, opt, strategy.initialize_state(), 3000, screen_info(8, [])
    )
    assert event["reset"] == 1 and event["pruned"] == 0 and cloud.num == 8
    torch.testing.assert_close(cloud.opacity.detach(), torch.clamp(before, max=0.01))
    assert cloud.opacity[1] == before[1]  # already below 0.01
    st = opt.state[cloud.opacity_logits]
    assert (st["exp_avg"] == 0).all() and (st["exp_avg_sq"] == 0).all()
    assert torch.equal(opt.state[cloud.means]["exp_avg"], means_moment)
    adam_step(cloud, opt)


# ----------------------------------------------------------------------------- the example


def test_example_cloud_and_bundled_ply():
    cloud = example_cloud()
    assert 1500 <= cloud.num <= 2500 and cloud.sh_degree == 2 and cloud.isotropic
    assert cloud.means.norm(dim=1).max() < 0.5
    rgb = cloud.rgb.detach()
    low, high = cloud.means[:, 2] < 0, cloud.means[:, 2] >= 0
    assert rgb[low][:, 2].min() > 0.8 and rgb[high][:, 0].min() > 0.9  # blue below, yellow above
    assert example_cloud(sh_degree=0).sh_rest.shape == (cloud.num, 0, 3)
    path = example_ply_path()
    assert path.is_file() and path.stat().st_size < 300_000
    bundled = load_ply(path)
    for k, v in cloud.state_dict().items():
        torch.testing.assert_close(bundled.state_dict()[k], v, rtol=0, atol=1e-6)


def test_knn_mean_sq_dist_against_a_naive_search():
    """The initial scales' neighbour distances (C.1) against sorting every pair's distance."""
    from ayg.gaussians import knn_mean_sq_dist

    g = torch.Generator().manual_seed(3)
    pts = torch.rand(300, 3, generator=g, dtype=torch.float64) * 2 + 5.0  # away from the origin
    d2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    d2.fill_diagonal_(float("inf"))
    naive = d2.sort(dim=1).values[:, :3].mean(1)
    assert torch.allclose(knn_mean_sq_dist(pts, k=3, chunk=64), naive, rtol=1e-12, atol=0)
    two = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    assert knn_mean_sq_dist(two, k=3).tolist() == [25.0, 25.0]  # k capped at N - 1
    with pytest.raises(ValueError, match="at least 2 points"):
        knn_mean_sq_dist(two[:1])
