"""Tests of ayg.regularizers against independent computations (C.4, C.5, sec. 3.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ayg.regularizers import interpolation_loss, jsd_regularizer, knn_indices, rigidity_loss


def points(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.3, 0.2, 0.4], dtype=dtype)


# ---------------------------------------------------------------- JSD (C.5, eq. 7)


def jsd_reference(means0: torch.Tensor, means_t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7 with torch.distributions on full MultivariateNormals of diagonal covariance."""

    def normal(x):
        var = x.var(0, unbiased=False) + eps
        return x.mean(0), var

    mu0, v0 = normal(means0)
    terms = []
    for x in means_t:
        mut, vt = normal(x)
        p0 = MultivariateNormal(mu0, torch.diag(v0))
        pt = MultivariateNormal(mut, torch.diag(vt))
        pm = MultivariateNormal(0.5 * (mu0 + mut), torch.diag(0.5 * (v0 + vt)))
        terms.append(0.5 * kl_divergence(p0, pm) + 0.5 * kl_divergence(pt, pm))
    return torch.stack(terms).mean()


def test_jsd_is_zero_for_equal_moments():
    x0 = points(200)
    mirrored = 2 * x0.mean(0) - x0  # point reflection: same mean and variances
    perm = x0[torch.randperm(200, generator=torch.Generator().manual_seed(3))]
    value = jsd_regularizer(x0, torch.stack([x0, mirrored, perm]))
    assert abs(value.item()) < 1e-12


def test_jsd_matches_reference_and_is_positive():
    x0 = points(300)
    moved = torch.stack([x0 + torch.tensor([0.1, 0.0, -0.2], dtype=x0.dtype), x0 * 1.3, x0.flip(1)])
    value = jsd_regularizer(x0, moved)
    torch.testing.assert_close(value, jsd_reference(x0, moved))
    for x in moved:
        assert jsd_regularizer(x0, x[None]) > 1e-4


def test_jsd_is_symmetric_and_permutation_invariant():
    a, b = points(150, 1), points(150, 2) * 1.5 + 0.1
    torch.testing.assert_close(jsd_regularizer(a, b[None]), jsd_regularizer(b, a[None]))
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    base = jsd_regularizer(a, b[None])
    torch.testing.assert_close(jsd_regularizer(a[perm], b[None]), base)
    torch.testing.assert_close(jsd_regularizer(a, b[perm][None]), base)


def test_jsd_gradient_matches_finite_differences():
    x0 = points(12)
    xt = (points(12, 5) * 1.2).unsqueeze(0).repeat(2, 1, 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: jsd_regularizer(x0, x), (xt,))


def test_jsd_shape_errors():
    with pytest.raises(ValueError, match="means0"):
        jsd_regularizer(torch.zeros(5, 2), torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="means_t"):
        jsd_regularizer(torch.zeros(5, 3), torch.zeros(1, 4, 3))


# ---------------------------------------------------------------- kNN


def test_knn_matches_kdtree():
    spatial = pytest.importorskip("scipy.spatial")
    pts = points(300)
    knn = knn_indices(pts, k=8, chunk=64)  # several chunks, a partial last one
    assert knn.shape == (300, 8) and knn.dtype == torch.long
    _, ref = spatial.cKDTree(pts.numpy()).query(pts.numpy(), k=9)
    np.testing.assert_array_equal(knn.numpy(), ref[:, 1:])
    assert not (knn == torch.arange(300)[:, None]).any()


def test_knn_float32_distances_match_brute_force():
    pts = points(257, 4, torch.float32)
    knn = knn_indices(pts, k=5, chunk=100)
    d = torch.cdist(pts.double(), pts.double())
    d.fill_diagonal_(float("inf"))
    ref_d = d.sort(1).values[:, :5]
    got_d = torch.gather(d, 1, knn)
    torch.testing.assert_close(got_d, ref_d, atol=1e-5, rtol=0)


def test_knn_errors():
    with pytest.raises(ValueError, match="k must"):
        knn_indices(torch.zeros(5, 3), k=5)
    with pytest.raises(ValueError, match="points"):
        knn_indices(torch.zeros(5, 2), k=2)


# ---------------------------------------------------------------- rigidity (C.4, eq. 5)


def rigidity_naive(delta: torch.Tensor, knn: torch.Tensor) -> torch.Tensor:
    diff = delta[:, :, None, :] - delta[:, knn]  # (T, N, k, 3)
    return diff.square().sum(-1).mean(-1).mean()  # (1/k) Σ_i, then mean over N and T


def test_rigidity_zero_for_uniform_translation_positive_for_shear():
    pts = points(100)
    knn = knn_indices(pts, k=10)
    shift = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, 0.0]], dtype=pts.dtype)
    translation = shift[:, None, :].expand(2, 100, 3).contiguous()
    assert rigidity_loss(translation, knn).item() == 0.0
    shear = torch.zeros(2, 100, 3, dtype=pts.dtype)
    shear[:, :, 0] = 0.5 * pts[:, 1]  # x += 0.5·y
    assert rigidity_loss(shear, knn).item() > 1e-4


def test_rigidity_hand_value():
    delta = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]])  # (1, 2, 3), distance 3
    knn = torch.tensor([[1], [0]])
    assert rigidity_loss(delta, knn).item() == pytest.approx(9.0)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_rigidity_matches_naive_value_and_gradient(chunk):
    g = torch.Generator().manual_seed(0)
    n, k = 64, 6
    delta = torch.randn(3, n, 3, generator=g, dtype=torch.float64, requires_grad=True)
    knn = torch.randint(0, n, (n, k), generator=g)  # repeated indices exercise index_add
    knn[:5, :3] = 7
    ours = rigidity_loss(delta, knn, chunk=chunk)
    ref = rigidity_naive(delta, knn)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours * 2.5, delta)
    (g_ref,) = torch.autograd.grad(ref * 2.5, delta)
    torch.testing.assert_close(g_ours, g_ref)


def test_rigidity_gradcheck_and_errors():
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    knn = knn_indices(points(10), k=3)
    assert torch.autograd.gradcheck(lambda d: rigidity_loss(d, knn, chunk=4), (delta,))
    with pytest.raises(ValueError, match="delta"):
        rigidity_loss(torch.zeros(10, 3), knn)
    with pytest.raises(ValueError, match="knn"):
        rigidity_loss(torch.zeros(2, 9, 3), knn)
    with pytest.raises(ValueError, match="knn indices"):
        rigidity_loss(torch.zeros(2, 10, 3), knn + 10)


# ---------------------------------------------------------------- interpolation (sec. 3.4)


def test_interpolation_loss():
    a = torch.zeros(2, 4, 3)
    b = torch.zeros(2, 4, 3)
    b[0, 0] = torch.tensor([1.0, 2.0, 2.0])
    assert interpolation_loss(a, b).item() == pytest.approx(9.0 / 8)
    assert interpolation_loss(a, a).item() == 0.0
    assert interpolation_loss(torch.zeros(0, 4, 3), torch.zeros(0, 4, 3)).item() == 0.0
    with pytest.raises(ValueError):
        interpolation_loss(a, b[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    pts = points(5000, 7)
    knn = knn_indices(pts, 8)
    assert torch.equal(knn_indices(pts.to(dev), 8, chunk=777).cpu(), knn)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 5000, 3, generator=g, dtype=torch.float64)
    d_cpu, d_gpu = d.clone().requires_grad_(True), d.to(dev).requires_grad_(True)
    l_cpu, l_gpu = rigidity_loss(d_cpu, knn), rigidity_loss(d_gpu, knn.to(dev), chunk=999)
    l_cpu.backward()
    l_gpu.backward()
    torch.testing.assert_close(l_gpu.cpu(), l_cpu)
    torch.testing.assert_close(d_gpu.grad.cpu(), d_cpu.grad)
    torch.testing.assert_close(
        jsd_regularizer(pts.to(dev), d.to(dev)).cpu(), jsd_regularizer(pts, d)
    )
