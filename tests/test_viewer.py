"""``ayg view``'s address handling and splat attributes (the browser itself is in
test_browser.py): a bad port or host ends in one line and exit 2 before anything starts, the
printed URL has the port actually bound, and the help says what --host 0.0.0.0 exposes."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

from ayg.asset import Asset
from ayg.cli import build_parser, main
from ayg.viewer import ViewerError, centers_at, check_address, splat_attributes
from test_asset import make_cloud
from test_export import moving_scene


@pytest.fixture()
def asset_path(tmp_path):
    path = tmp_path / "a.ayg"
    Asset.from_cloud(make_cloud(n=4)).save(path)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "-1"], "--port must be an integer in 0..65535"),
        (["--port", "70000"], "--port must be an integer in 0..65535"),
        (["--host", "bogus.invalid"], "--host 'bogus.invalid' is not a known address"),
        (["--host", "192.0.2.1"], "is not an address of this machine"),  # TEST-NET-1, not ours
    ],
)
def test_view_bad_address_one_line_exit_2(asset_path, capsys, args, message):
    start = time.monotonic()
    rc = main(["view", str(asset_path), *args])
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - start < 10
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_check_address_accepts_local_addresses():
    check_address("127.0.0.1", 0)
    check_address("localhost", 8080)
    check_address("0.0.0.0", 65535)
    with pytest.raises(ViewerError, match="0..65535"):
        check_address("127.0.0.1", True)


def test_view_prints_the_port_actually_bound(capsys):
    pytest.importorskip("viser")
    from ayg.viewer import view

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        viewer = view(Asset.from_cloud(make_cloud(n=4)), port=port, block=False)
        try:
            bound = int(viewer.url.rsplit(":", 1)[1])
            assert bound != port and viewer.url == f"http://127.0.0.1:{bound}"
            out = capsys.readouterr().out
            assert f"http://127.0.0.1:{bound} (port {port} was taken)" in out
            assert "only this machine can connect" in out
            with socket.create_connection(("127.0.0.1", bound), timeout=5):
                pass  # the printed port is the one listening
        finally:
            viewer.stop()
    finally:
        taken.close()


def test_view_help_says_the_viewer_has_no_authentication(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["view", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "no authentication" in text and "--host 0.0.0.0" in text
    assert "default 127.0.0.1" in text


def test_splat_attributes_are_the_world_covariances():
    """Σ = R S² Rᵀ of the world attributes (placements included), compared with the second
    moment of samples drawn from each Gaussian; colours are the degree-0 colour."""
    asset = moving_scene()
    a = splat_attributes(asset)
    n = asset.num_gaussians
    assert a["covariances"].shape == (n, 3, 3) and a["opacities"].shape == (n, 1)
    with torch.no_grad():
        attrs = asset.attributes()
        cloud = asset.cloud_at(0.0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    from ayg.gaussians import quat_to_rotmat

    rot = quat_to_rotmat(cloud.rotations.double())  # (N, 3, 3)
    s = attrs["scales"].double()
    for i in range(n):
        x = (z * s[i]) @ rot[i].T  # samples of Gaussian i around 0
        emp = (x.T @ x / len(x)).numpy()
        np.testing.assert_allclose(a["covariances"][i], emp, atol=0.03 * s[i].max().item() ** 2)
    rgb = (0.5 + 0.28209479177387814 * attrs["sh"][:, 0]).clamp(0, 1).numpy()
    np.testing.assert_allclose(a["rgbs"], rgb, atol=1e-6)
    np.testing.assert_allclose(a["opacities"][:, 0], attrs["opacity"].numpy(), atol=1e-6)
    np.testing.assert_allclose(centers_at(asset, 0.6), asset.positions([0.6])[0].detach().numpy())
