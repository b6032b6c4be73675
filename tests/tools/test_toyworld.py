"""Toy world: vocabulary, analytic renderer (checked against closed forms), datasets."""

from __future__ import annotations

import math

import pytest
import torch

from ayg.cameras import look_at_cameras
from ayg.toyworld.vocab import (
    COLOUR_NULL,
    COLOUR_RGB,
    HELD_OUT,
    MOTION_NULL,
    MOTION_STATIC,
    SHAPE_NULL,
    VIDEO_NEGATIVE_PROMPT,
    ToyPrompt,
    detokenize,
    parse_prompt,
    tokenize,
    tokenize_batch,
)
from tools.toyworld import data as D
from tools.toyworld import scene

# ---------------------------------------------------------------------------------------------
# Vocabulary


def test_parse_prompt_ignores_case_punctuation_and_unknown_words():
    assert parse_prompt("a red ball") == ToyPrompt("red", "ball", None)
    assert parse_prompt("A RED Ball, spinning!") == ToyPrompt("red", "ball", "spinning")
    assert parse_prompt("a shiny blue cone that is nodding, front view") == ToyPrompt(
        "blue", "cone", "nodding"
    )
    assert parse_prompt("yellow-ring sways") == ToyPrompt("yellow", "ring", "swaying")
    assert parse_prompt("a green cube, static") == ToyPrompt("green", "cube", None)
    assert parse_prompt(ToyPrompt("red", "cone")).text == "a red cone"


@pytest.mark.parametrize("text", ["a purple ball", "a red pyramid", "", "spinning"])
def test_parse_prompt_error_is_one_line_listing_the_vocabulary(text):
    with pytest.raises(ValueError) as err:
        parse_prompt(text)
    msg = str(err.value)
    assert "\n" not in msg
    for word in (
        "red",
        "green",
        "blue",
        "yellow",
        "ball",
        "cube",
        "cone",
        "ring",
        "spinning",
        "nodding",
    ):
        assert word in msg


def test_tokenize_null_static_and_view_words():
    assert tokenize("").tolist() == [COLOUR_NULL, SHAPE_NULL, MOTION_NULL]
    assert tokenize(VIDEO_NEGATIVE_PROMPT).tolist() == [COLOUR_NULL, SHAPE_NULL, MOTION_STATIC]
    assert tokenize("not moving").tolist()[2] == MOTION_STATIC
    assert tokenize("a red ball").tolist() == [0, 0, MOTION_NULL]
    assert tokenize("a blue cone nodding").tolist() == [2, 2, 3]
    for view in ("front view", "side view", "back view", "overhead view"):
        assert torch.equal(
            tokenize(f"a blue cone nodding, {view}"), tokenize("a blue cone nodding")
        )
    assert tokenize(ToyPrompt("green", "ring")).tolist() == [1, 3, MOTION_STATIC]
    assert tokenize_batch(["", "a red cube"]).shape == (2, 3)
    assert tokenize("a red ball").dtype == torch.long
    assert detokenize(tokenize("a yellow ring swaying")) == "a yellow ring swaying"


# ---------------------------------------------------------------------------------------------
# Renderer


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) weights -> (row, col) centroid."""
    H, W = mask.shape
    rows = torch.arange(H, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(W, dtype=torch.float32)[None, :] + 0.5
    m = mask.sum()
    return torch.stack([(mask * rows).sum() / m, (mask * cols).sum() / m])


@pytest.mark.parametrize("azimuth", [0.0, 73.0, 200.0])
def test_ball_is_a_centred_disc_of_analytic_radius(azimuth):
    d, fov, res = 2.5, 40.0, 64
    cams = look_at_cameras(20.0, azimuth, d, fov, res, res)
    out = scene.render("a red ball", cams, supersample=2)
    alpha = out.alpha[0, 0]
    f = res / (2 * math.tan(math.radians(fov) / 2))
    r = scene.BALL_RADIUS
    radius_px = f * r / math.sqrt(d * d - r * r)
    area = alpha.sum().item()
    assert area == pytest.approx(math.pi * radius_px**2, rel=0.03)
    assert torch.allclose(_centroid(alpha), torch.tensor([res / 2, res / 2]), atol=0.1)


def test_colours_background_and_two_tones():
    cams = look_at_cameras(0.0, 0.0, 2.5, 40.0, 32, 32)
    for colour, rgb in COLOUR_RGB.items():
        for bg in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
            out = scene.render(f"a {colour} ball", cams, background=torch.tensor(bg))
            img = out.rgb[0]
            assert torch.allclose(img[:, 0, 0], torch.tensor(bg))  # corner = background
            # From the front the image right is +y: the x·y > 0 quarter, the prompt's colour.
            px = img[:, 16, 19]  # just right of centre, facing the camera
            main = torch.tensor(rgb)
            shade = (px / main).max()
            assert torch.allclose(px, main * shade, atol=0.02)  # a multiple of the colour
            tint = img[:, 16, 12]  # left: the pale tint, more white in it
            assert tint.min() > px.min() + 0.1
    assert out.alpha.min() == 0 and out.alpha.max() == 1


def _tone_at_azimuth(shape: str, degrees: float, colour: str = "blue") -> torch.Tensor:
    """The rendered colour (3,) at the image centre of a camera looking straight in (elevation
    0) from ``degrees`` of azimuth: the object's surface at that azimuth."""
    cams = look_at_cameras(0.0, degrees, 2.5, 30.0, 33, 33)
    return scene.render(f"a {colour} {shape}", cams).rgb[0, :, 16, 16]


@pytest.mark.parametrize(
    ("shape", "sectors", "tint"), [("ball", 8, 0.65), ("cone", 8, 0.65), ("cube", 4, 0.5)]
)
def test_round_shapes_have_eighths_and_a_paler_tint_square_ones_quarters(shape, sectors, tint):
    # a round shape shows a spin only through its tone boundaries, so it has more of them
    assert (scene.TONE_SECTORS[shape], scene.TINT[shape]) == (sectors, tint)
    main = torch.tensor(COLOUR_RGB["blue"])
    pale = (1.0 - tint) * main + tint
    for k in range(sectors):  # the middle of each sector, going round from azimuth 0
        px = _tone_at_azimuth(shape, (k + 0.5) * 360.0 / sectors)
        tone = main if k % 2 == 0 else pale  # the prompt's colour first, then alternating
        # Lambert shading scales every channel alike: the pixel is a multiple of its tone
        assert torch.allclose(px / px.max(), tone / tone.max(), atol=0.02), (k, px)


def test_spinning_changes_the_image_and_a_full_turn_returns():
    cams = look_at_cameras(15.0, [0.0, 120.0, 250.0], 2.5, 40.0, 32, 32)
    for shape in ("ball", "cube", "ring"):
        prompt = f"a green {shape} spinning"
        rest = scene.render(prompt, cams, 0.0).rgb
        turned = scene.render(prompt, cams, 0.2).rgb
        full = scene.render(prompt, cams, 1.0 / scene.SPIN_TURNS).rgb
        # every azimuth sees the rotation
        assert ((turned - rest).abs().amax(dim=(1, 2, 3)) > 0.3).all()
        assert (full - rest).abs().gt(0.05).float().mean() < 0.01  # up to a few edge pixels


def test_swaying_moves_the_top_sideways_nodding_does_not():
    res = 64
    cams = look_at_cameras(0.0, 0.0, 2.5, 40.0, res, res)  # the front: image right = +y
    tau = 0.25  # bend at its maximum
    shifts = {}
    for motion in ("swaying", "nodding"):
        a0 = scene.render(f"a blue cone {motion}", cams, 0.0).alpha[0, 0]
        a1 = scene.render(f"a blue cone {motion}", cams, tau).alpha[0, 0]
        top = slice(0, res // 2)
        shifts[motion] = (_centroid(a1[top]) - _centroid(a0[top]))[1].item()
    f = res / (2 * math.tan(math.radians(20.0)))
    assert shifts["swaying"] > 0.1 * f / 2.5  # towards +y = image right, several pixels
    assert abs(shifts["nodding"]) < 0.3


def test_nodding_is_twice_as_fast_as_swaying():
    # Two nods per segment, one sway: the nod is back at rest at τ = 0.5, the sway at its
    # opposite extreme at τ = 0.75; both share the amplitude (the scene docstring).
    top = torch.tensor([[0.0, 0.0, 0.4]])  # h = 1: moves by the full bend
    for tau, sway_y, nod_x in ((0.125, 0.25 * math.sqrt(0.5), 0.25), (0.5, 0.0, 0.0)):
        sway = scene.deform(top, "swaying", tau)[0]
        nod = scene.deform(top, "nodding", tau)[0]
        assert sway[1].item() == pytest.approx(sway_y, abs=1e-6) and sway[0] == 0
        assert nod[0].item() == pytest.approx(nod_x, abs=1e-6) and nod[1] == 0
    assert scene.deform(top, "swaying", 0.75)[0, 1].item() == pytest.approx(-0.25, abs=1e-6)
    assert scene.deform(top, "nodding", 0.375)[0, 0].item() == pytest.approx(-0.25, abs=1e-6)


def test_toy_stage2_cameras_match_the_toy_preset():
    from ayg.config import preset
    from tools.toyworld.data import TOY_STAGE2_CAMERAS

    s2 = preset("toy").stage2
    assert tuple(s2.distance_range) == TOY_STAGE2_CAMERAS.distance_range
    assert tuple(s2.azimuth_offset_range) == TOY_STAGE2_CAMERAS.azimuth_offset_range
    # the rest is the paper's C.6
    paper = preset("paper").stage2
    for name in ("fov_range", "elevation_range", "elevation_offset_range"):
        assert tuple(getattr(s2, name)) == getattr(TOY_STAGE2_CAMERAS, name)
        assert getattr(s2, name) == getattr(paper, name)
    assert s2.dynamic_cameras and paper.distance_range == (1.5, 3.0)


def test_deform_and_undeform_are_inverse():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5, 100, 3, generator=g) - 0.5
    tau = torch.rand(5, generator=g)
    for motion in (None, "spinning", "swaying", "nodding"):
        back = scene.undeform(scene.deform(pts, motion, tau), motion, tau)
        torch.testing.assert_close(back, pts)
    assert torch.equal(scene.deform(pts, "swaying", 0.0), pts)  # τ = 0 is the rest pose


def test_render_per_camera_prompts_and_errors():
    cams = look_at_cameras(15.0, [0.0, 90.0], 2.5, 40.0, 24, 16)  # W 24, H 16
    out = scene.render(["a red ball", "a blue ring swaying"], cams, torch.tensor([0.0, 0.3]))
    assert out.rgb.shape == (2, 3, 16, 24) and out.alpha.shape == (2, 1, 16, 24)
    assert 0.0 <= out.rgb.min() and out.rgb.max() <= 1.0
    with pytest.raises(ValueError, match="prompts for 2 cameras"):
        scene.render(["a red ball"] * 3, cams)
    with pytest.raises(ValueError, match="tau"):
        scene.render("a red ball", cams, torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# Datasets


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_image_and_multiview_batches():
    b = D.sample_image_batch(3, 16, _gen())
    assert b.images.shape == (3, 1, 3, 16, 16) and b.tokens.shape == (3, 3)
    assert set(b.tokens[:, 2].tolist()) <= {MOTION_STATIC, MOTION_NULL}
    assert len(b.views) == 3 and len(b.texts()) == 3
    assert all(p.motion is None for p in b.prompts)
    assert ((b.cameras.elevation >= 10) & (b.cameras.elevation <= 45)).all()
    m = D.sample_multiview_batch(2, (12, 16), _gen())
    assert m.images.shape == (2, 4, 3, 12, 16) and len(m.cameras) == 8
    az = m.cameras.azimuth.reshape(2, 4)
    gaps = (az[:, 1:] - az[:, :1]) % 360.0
    torch.testing.assert_close(gaps, torch.tensor([[90.0, 180.0, 270.0]] * 2))
    bg = m.images[:, :, :, 0, 0]  # corners show the shared black / white background
    assert torch.allclose(bg, m.background[:, None].expand_as(bg))


def test_video_batch_shapes_fps_and_determinism():
    a = D.sample_video_batch(3, (12, 16), _gen(5))
    b = D.sample_video_batch(3, (12, 16), _gen(5))
    assert a.images.shape == (3, 16, 3, 12, 16) and a.fps.shape == (3,)
    assert torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens)
    assert set(a.fps.tolist()) <= {4.0, 8.0, 12.0}
    span = a.tau[:, -1] - a.tau[:, 0]
    torch.testing.assert_close(span, 3.0 / a.fps)
    c = D.sample_video_batch(3, (12, 16), _gen(6))
    assert not torch.equal(a.images, c.images)


def test_held_out_pairs_never_move_in_the_video_set():
    # Only the prompts matter here: sample many at a tiny resolution.
    b = D.sample_video_batch(96, (2, 2), _gen(1), static_prob=0.25)
    moving = [(p.colour, p.shape) for p in b.prompts if p.motion is not None]
    assert moving and not set(moving) & HELD_OUT
    static = [(p.colour, p.shape) for p in b.prompts if p.motion is None]
    assert static and all(
        t == MOTION_STATIC for t in b.tokens[[p.motion is None for p in b.prompts], 2]
    )
    b2 = D.sample_video_batch(96, (2, 2), _gen(1), exclude_held_out=False, static_prob=0.0)
    assert {(p.colour, p.shape) for p in b2.prompts} & HELD_OUT


def test_classifier_batches():
    a = D.sample_appearance_batch(4, 16, _gen(2))
    assert a.images.shape == (4, 1, 3, 16, 16)
    assert torch.equal(a.colour_labels, a.tokens[:, 0]) and torch.equal(
        a.shape_labels, a.tokens[:, 1]
    )
    m = D.sample_motion_batch(48, (2, 2), _gen(3))
    assert m.images.shape == (48, 16, 3, 2, 2) and m.fps.shape == (48,)
    assert set(m.motion_labels.tolist()) == {0, 1, 2, 3}
    moving = {(p.colour, p.shape) for p in m.prompts if p.motion is not None}
    assert moving & HELD_OUT  # all pairs allowed for the classifier
    # about half the clips play mirrored (τ → −τ), the rest forwards; labels do not change
    mirrored = (m.tau < 0).any(dim=1)
    assert ((m.tau <= 0).all(dim=1) | (m.tau >= 0).all(dim=1)).all()
    assert 8 < int(mirrored.sum()) < 40
    plain = D.sample_motion_batch(48, (2, 2), _gen(3), mirror_prob=0.0)
    assert (plain.tau >= 0).all() and torch.equal(plain.motion_labels, m.motion_labels)


def test_a_mirrored_sway_is_the_sway_started_the_other_way():
    cams = look_at_cameras(0.0, 0.0, 2.5, 40.0, 32, 32)  # the front: image right = +y
    fwd = scene.render("a blue cone swaying", cams, 0.25).alpha
    back = scene.render("a blue cone swaying", cams, -0.25).alpha
    # seen from the front the bent silhouette is mirrored about the image's vertical axis
    assert (back - fwd.flip(-1)).abs().mean() < 0.01
    assert (back - fwd).abs().mean() > 0.03


def test_drop_tokens():
    tokens = torch.tensor([[0, 1, 2]] * 200)
    assert torch.equal(D.drop_tokens(tokens, 0.0, _gen()), tokens)
    assert (
        D.drop_tokens(tokens, 1.0, _gen()) == torch.tensor([COLOUR_NULL, SHAPE_NULL, MOTION_NULL])
    ).all()
    whole = D.drop_tokens(tokens, 0.5, _gen())
    dropped = (whole == COLOUR_NULL).all(dim=1)
    assert 0.3 < dropped.float().mean() < 0.7
    assert ((whole == tokens).all(dim=1) | dropped).all()  # all or nothing per row
    per_slot = D.drop_tokens(tokens, 0.5, _gen(), per_slot=True)
    partial = ~(per_slot == tokens).all(dim=1) & ~(per_slot == COLOUR_NULL).all(dim=1)
    assert partial.any()


def test_image_batch_with_moving_frames():
    b = D.sample_image_batch(64, (2, 2), _gen(4), moving_prob=0.5)
    moving = [i for i, p in enumerate(b.prompts) if p.motion is not None]
    assert 10 < len(moving) < 54
    assert not {(b.prompts[i].colour, b.prompts[i].shape) for i in moving} & HELD_OUT
    assert all(int(b.tokens[i, 2]) == b.prompts[i].motion_class for i in moving)
    assert all(float(b.tau[i, 0]) > 0 for i in moving)


def test_toy_preset_distils_stage1_with_sds_and_stage2_with_csd():
    # docs/RESULTS.md: CSD alone speckles 64-pixel toy clouds; the paper keeps CSD in both
    from ayg.config import preset

    toy, paper = preset("toy"), preset("paper")
    assert (toy.stage1.mode, toy.stage2.mode) == ("sds", "csd")
    assert (paper.stage1.mode, paper.stage2.mode) == ("csd", "csd")


def test_every_ablation_row_changes_the_toy_preset():
    from ayg.config import apply_overrides, preset, validate
    from ayg.evaluation.ablations import ROWS

    full = preset("toy").to_dict()
    assert ROWS[0][1] == []
    for name, overrides in ROWS[1:]:
        cfg = apply_overrides(preset("toy"), overrides)
        validate(cfg)
        assert cfg.to_dict() != full, f"ablation row '{name}' is the full method"


def test_toy_stage2_draws_diffusion_times_below_half():
    # The toy preset's stage 2 samples t ∈ U(0.02, 0.5) for both teachers (config.toy_preset:
    # above t ≈ 0.75 a 24×40 clip carries no motion); the paper's presets keep U(0.02, 0.98).
    from ayg.config import preset
    from ayg.stages import stage2_terms

    g = torch.Generator().manual_seed(0)
    for name, hi in (("toy", 0.5), ("paper", 0.98)):
        for term in stage2_terms(preset(name).stage2):
            t = term.t_range.sample(4000, 0, g)
            assert t.min().item() >= 0.02 and t.max().item() <= hi
            assert t.max().item() > hi - 0.02 and t.min().item() < 0.04
