"""The Wan 2.1 video teacher on a tiny, randomly initialised WanTransformer3DModel +
AutoencoderKLWan + UMT5 encoder + T5 tokenizer, written here in the official diffusers folder
layout and loaded through ``from_pretrained`` offline; nothing is downloaded. The flow-matching
score is checked against closed forms on a scripted velocity model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel  # noqa: E402

from ayg.config import TeacherConfig, apply_overrides, preset  # noqa: E402
from ayg.distill import Teacher, TeacherTerm, TRangeSchedule, distill_loss, to_timesteps  # noqa: E402
from ayg.teachers import build_teachers, video_family  # noqa: E402
from ayg.teachers.hub import TeacherNotAvailable  # noqa: E402
from ayg.teachers.synthetic import stand_in_t5_tokenizer, write_wan_pipeline  # noqa: E402
from ayg.teachers.wan import (  # noqa: E402
    MODEL_ID,
    NEGATIVE_PROMPT,
    WanTeacher,
    alphas_cumprod_from_sigmas,
    eps_from_velocity,
    flow_schedule,
    flow_sigmas,
    vp_to_flow_scale,
)

D = 32  # text width
L = 16  # text tokens
RES = (32, 32)  # the tiny teacher's resolution: 4×4 latents, 2×2 patches
F = 17  # frames -> 5 latent frames
SHIFT = 3.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; extra threads only contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_parts() -> dict:
    torch.manual_seed(0)
    tokenizer = stand_in_t5_tokenizer(max_length=L)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=D,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=D,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
    )


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    """model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/ as
    ``WanPipeline.save_pretrained`` writes them (safetensors)."""
    root = tmp_path_factory.mktemp("tiny-wan") / "wan"
    return write_wan_pipeline(root, shift=SHIFT, **tiny_parts())


@pytest.fixture
def offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache / "hub"


@pytest.fixture(scope="module")
def wan(wan_folder) -> WanTeacher:
    return WanTeacher.from_pretrained(
        str(wan_folder), local_files_only=True, resolution=RES, text_length=L
    )


def count_calls(module: torch.nn.Module) -> list[int]:
    counter = [0]

    def hook(*_):
        counter[0] += 1

    module.register_forward_hook(hook)
    return counter


# -- loading and shapes ---------------------------------------------------------------------------


def test_official_layout_loads_offline(wan_folder, offline):
    names = sorted(p.name for p in wan_folder.iterdir())
    assert names == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    ]
    assert list((wan_folder / "transformer").glob("*.safetensors"))  # no pickles
    teacher = WanTeacher.from_pretrained(str(wan_folder), resolution=RES, text_length=L)
    assert isinstance(teacher, Teacher) and teacher.kind == "video"
    assert teacher.frames == F and teacher.latent_frames == 5
    assert teacher.shift == SHIFT and teacher.dtype == torch.float32  # fp32 on the CPU
    assert teacher.negative_prompt == NEGATIVE_PROMPT
    assert video_family(str(wan_folder)) == "wan"


def test_shapes(wan):
    clips = torch.rand(2, F, 3, 20, 32)  # a stage-2 render size, resized to RES
    z = wan.encode(clips, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 5, 16, 4, 4) and z.dtype == torch.float32
    emb = wan.embed(["a red ball", ""])
    assert emb.shape == (2, L, D)
    eps = wan.predict_noise(torch.randn(2, 5, 16, 4, 4), torch.tensor([20, 980]), emb)
    assert eps.shape == (2, 5, 16, 4, 4) and eps.dtype == torch.float32
    assert wan.alphas_cumprod().shape == (1000,) and wan.alphas_cumprod().dtype == torch.float32
    with pytest.raises(ValueError, match="expects"):
        wan.encode(torch.rand(1, 16, 3, 32, 32))


def test_embeddings_are_zero_past_the_prompt(wan):
    emb = wan.embed(["a cat", ""])  # "a cat" is 4 tokens + </s>, "" is </s> alone
    n = len(wan.tokenizer("a cat").input_ids)
    assert emb[0, :n].abs().sum(-1).gt(0).all() and emb[0, n:].abs().sum() == 0
    assert emb[1, :1].abs().sum() > 0 and emb[1, 1:].abs().sum() == 0


def test_encode_is_resize_then_normalised_vae_mean(wan_folder):
    teacher = WanTeacher.from_pretrained(
        str(wan_folder), local_files_only=True, resolution=RES, sample_latents=False
    )
    vae = teacher.vae
    clips = torch.rand(1, F, 3, 24, 40)
    x = torch.nn.functional.interpolate(clips[0], size=RES, mode="bilinear", align_corners=False)
    with torch.no_grad():
        mu = vae.encode(2 * x.transpose(0, 1)[None] - 1).latent_dist.mean  # (1, 16, 5, 4, 4)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
        expected = ((mu - mean) / std).transpose(1, 2)
        got = teacher.encode(clips)
    torch.testing.assert_close(got, expected)


def test_predict_noise_is_the_transformer_velocity_turned_into_eps(wan):
    """x_σ = r·z_t goes in at timestep 1000·σ; ε̂ = x_σ + (1 − σ)·v̂ comes out."""
    noisy = torch.randn(2, 5, 16, 4, 4)
    t = torch.tensor([100, 700])
    emb = wan.embed(["a red ball", "a blue cube"])
    sigma = flow_sigmas(SHIFT)[t].view(2, 1, 1, 1, 1)
    x = noisy * ((1 - sigma) ** 2 + sigma**2).sqrt()
    with torch.no_grad():
        v = wan.transformer(
            hidden_states=x.transpose(1, 2),
            timestep=sigma.flatten() * 1000,
            encoder_hidden_states=emb,
            return_dict=False,
        )[0].transpose(1, 2)
        eps = wan.predict_noise(noisy, t, emb)
    torch.testing.assert_close(eps, x + (1 - sigma) * v)


# -- the schedule ---------------------------------------------------------------------------------


def test_sigmas_match_the_schedulers_shifted_grid():
    """σ_i at u = i/T is the FlowMatchEulerDiscreteScheduler's training σ at the same u."""
    sigmas = flow_sigmas(SHIFT, 1000)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT).sigmas
    # the scheduler holds u = T/T, ..., 1/T (descending); ours u = 0, 1/T, ..., (T−1)/T
    torch.testing.assert_close(sigmas[1:], reference.flip(0)[:-1].float(), atol=1e-6, rtol=0)
    assert sigmas[0] == 0 and sigmas[-1] < 1
    # the config's t-range maps through the shift: u = 0.02 -> 0.0577, 0.5 -> 0.75, 0.98 -> 0.993
    i = to_timesteps(torch.tensor([0.02, 0.5, 0.98]), 1000)
    torch.testing.assert_close(
        sigmas[i], torch.tensor([0.06 / 1.04, 0.75, 2.94 / 2.96]), atol=1e-6, rtol=0
    )


def test_alphas_rescale_the_flow_path_to_variance_preserving():
    sigmas = flow_sigmas(SHIFT)[1:]
    a = alphas_cumprod_from_sigmas(sigmas)
    assert (a[1:] < a[:-1]).all() and a.min() > 0 and a.max() < 1
    x0, eps = torch.randn(2, 999), torch.randn(2, 999)
    vp = a.sqrt() * x0 + (1 - a).sqrt() * eps
    flow = (1 - sigmas) * x0 + sigmas * eps
    torch.testing.assert_close(vp_to_flow_scale(sigmas) * vp, flow, atol=1e-5, rtol=1e-5)


def test_eps_from_velocity_closed_form():
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    sigma = torch.tensor([0.0, 0.4, 0.999]).view(3, 1)
    x = (1 - sigma) * x0 + sigma * eps
    torch.testing.assert_close(eps_from_velocity(eps - x0, x, sigma), eps)


def test_flow_schedule_reads_diffusers_configs():
    unipc = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    assert flow_schedule(dict(unipc.config)) == (3.0, 1000)
    euler = FlowMatchEulerDiscreteScheduler(shift=5.0, num_train_timesteps=500)
    assert flow_schedule({**euler.config, "_class_name": "FlowMatchEulerDiscreteScheduler"}) == (
        5.0,
        500,
    )
    with pytest.raises(ValueError, match="not a flow-matching"):
        flow_schedule({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000})
    with pytest.raises(ValueError, match="dynamic"):
        flow_schedule(
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
        )


# -- score distillation on a scripted velocity model ----------------------------------------------

PATTERN = torch.randn(5, 16, 4, 4, generator=torch.Generator().manual_seed(3))


def point_mass(emb: torch.Tensor) -> torch.Tensor:
    """The data point x₀ the scripted model believes in for each prompt: (B', 5, 16, 4, 4)."""
    return emb.float().mean((1, 2)).view(-1, 1, 1, 1, 1) * 10 * PATTERN


class PointMassVelocity(torch.nn.Module):
    """The exact velocity field of a point mass at x₀: v = (x_σ − x₀)/σ, σ = timestep/1000."""

    config = SimpleNamespace(patch_size=(1, 2, 2))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        sigma = (timestep / 1000).view(-1, 1, 1, 1, 1)
        x0 = point_mass(encoder_hidden_states).transpose(1, 2)  # (B', c, F', h, w)
        return ((hidden_states - x0) / sigma,)


@pytest.fixture(scope="module")
def scripted(wan) -> WanTeacher:
    return WanTeacher.from_components(
        PointMassVelocity(), wan.vae, wan.text_encoder, wan.tokenizer, SHIFT, text_length=L
    )


def test_scripted_eps_is_the_drawn_noise_at_the_data_point(scripted):
    """z_t = √ᾱ z + √(1 − ᾱ) ε with ᾱ from the teacher: ε̂ = ε + (1−σ)/σ·(z − x₀), so the exact
    noise when z is the data point."""
    t = torch.tensor([30, 400, 950])
    emb = scripted.embed(["a red ball", "a blue cube", ""])
    x0 = point_mass(emb)
    z, eps = torch.randn(3, 5, 16, 4, 4), torch.randn(3, 5, 16, 4, 4)
    a = scripted.alphas_cumprod()[t].view(3, 1, 1, 1, 1)
    sigma = flow_sigmas(SHIFT)[t].view(3, 1, 1, 1, 1)
    for latents, expected in ((x0, eps), (z, eps + (1 - sigma) / sigma * (z - x0))):
        noisy = a.sqrt() * latents + (1 - a).sqrt() * eps
        got = scripted.predict_noise(noisy, t, emb)
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("mode", ["csd", "sds"])
def test_distill_gradient_closed_form(scripted, monkeypatch, mode):
    """The latents' gradient from distill_loss is w(t)·MA(direction)/B with the closed-form
    ε̂ of the point-mass model: CSD ω·k(x₀_∅ − x₀_v) or SDS k(z − x₀_∅) + s·k(x₀_∅ − x₀_v), plus
    ω_neg·k(x₀_neg − x₀_∅), k = (1 − σ)/σ; then motion amplification over the latent frames."""
    u = 0.3
    term = TeacherTerm(
        weight=1.5,
        t_range=TRangeSchedule.constant(u, u),
        mode=mode,
        cfg_scale=7.5,
        negative_prompt="static",
        negative_weight=0.8,
        motion_amplification=4.0,
    )
    z = torch.randn(2, 5, 16, 4, 4, requires_grad=True)
    monkeypatch.setattr(scripted, "encode", lambda images, **_: z)
    clips = torch.rand(2, F, 3, 32, 32)
    loss, _ = distill_loss(scripted, term, clips, "a red ball", 0, torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(loss, z)

    i = to_timesteps(torch.tensor([u]), 1000)
    sigma = flow_sigmas(SHIFT)[i]
    k = (1 - sigma) / sigma
    c, n, e = (point_mass(scripted.embed([p])) for p in ("a red ball", "", "static"))
    base = 1.5 * k * (n - c) if mode == "csd" else 1.5 * (k * (z.detach() - n) + 7.5 * k * (n - c))
    direction = base + 0.8 * k * (e - n)
    mean = direction.mean(1, keepdim=True)
    direction = mean + 4.0 * (direction - mean)
    w = 1 - alphas_cumprod_from_sigmas(sigma)
    torch.testing.assert_close(grad, (w * direction / 2).expand_as(grad), atol=1e-4, rtol=1e-4)


# -- gradients and batching on the real tiny model ------------------------------------------------


def test_gradients_reach_every_rendered_frame(wan):
    clips = torch.rand(1, F, 3, 20, 32, requires_grad=True)
    term = TeacherTerm(negative_prompt="static", negative_weight=0.8, motion_amplification=24.0)
    loss, _ = distill_loss(
        wan, term, clips, "a red ball spinning", 0, torch.Generator().manual_seed(0)
    )
    loss.backward()
    per_frame = clips.grad.abs().flatten(2).sum(-1)  # (1, F)
    assert torch.isfinite(clips.grad).all() and (per_frame > 0).all()
    assert not any(p.grad is not None for p in wan.transformer.parameters())  # frozen
    assert not any(p.grad is not None for p in wan.vae.parameters())


def test_grad_frames_detaches_the_other_frames(wan):
    clips = torch.rand(2, F, 3, 32, 32, requires_grad=True)
    z = wan.encode(clips, grad_frames=3, generator=torch.Generator().manual_seed(0))
    z.sum().backward()
    assert (clips.grad.abs().flatten(2).sum(-1) > 0).sum(1).tolist() == [3, 3]


def test_encoder_checkpointing_keeps_only_the_pixels_and_changes_nothing(wan):
    """Per-clip checkpointing of the causal encoder: same latents, same gradients, and the
    forward keeps no encoder activations for the backward."""
    parts = (wan.transformer, wan.vae, wan.text_encoder, wan.tokenizer, SHIFT)
    plain = WanTeacher.from_components(*parts, resolution=RES, checkpoint_encoder=False)
    clips = torch.rand(2, F, 3, 20, 32)
    grads, saved = [], []
    for teacher in (wan, plain):
        assert teacher.checkpoint_encoder is (teacher is wan)
        x = clips.clone().requires_grad_(True)
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z = teacher.encode(x, generator=torch.Generator().manual_seed(0))
        (z * torch.linspace(-1, 1, z.numel()).view(z.shape)).sum().backward()
        grads.append((z.detach(), x.grad))
        saved.append(total[0])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert saved[0] < saved[1] / 20, saved


def test_one_transformer_forward_for_all_branches(wan):
    calls = count_calls(wan.transformer)
    term = TeacherTerm(negative_prompt="static", negative_weight=0.8, motion_amplification=24.0)
    distill_loss(wan, term, torch.rand(2, F, 3, 32, 32), "a red ball", 0)  # cond, uncond, negative
    assert calls[0] == 1
    before = wan.prompts.encoder_calls
    distill_loss(wan, term, torch.rand(2, F, 3, 32, 32), "a red ball", 1)
    assert wan.prompts.encoder_calls == before  # the three prompts were cached


def test_bad_frames_and_resolution_are_one_line_errors(wan):
    parts = (wan.transformer, wan.vae, wan.text_encoder, wan.tokenizer, SHIFT)
    with pytest.raises(ValueError, match=r"4k \+ 1 frames"):
        WanTeacher.from_components(*parts, frames=16)
    with pytest.raises(ValueError, match="multiples of"):
        WanTeacher.from_components(*parts, resolution=(20, 32))
    assert WanTeacher.from_components(*parts, frames=33, resolution=RES).latent_frames == 9


def test_offload_and_activate(wan_folder):
    teacher = WanTeacher.from_pretrained(str(wan_folder), local_files_only=True, resolution=RES)
    teacher.offload()
    assert not teacher.active
    teacher.embed(["a dog"])  # activates on use
    assert teacher.active


# -- selection by teachers.video_model ------------------------------------------------------------


def test_offline_missing_wan_is_one_line(offline):
    with pytest.raises(TeacherNotAvailable, match="download") as info:
        WanTeacher.from_pretrained(MODEL_ID, cache_dir=offline, local_files_only=True)
    assert MODEL_ID in str(info.value) and "\n" not in str(info.value)
    cfg = TeacherConfig(video_model=MODEL_ID, local_files_only=True)
    with pytest.raises(TeacherNotAvailable, match=f"hf download {MODEL_ID}"):
        build_teachers(cfg, torch.device("cpu"), ("video",))


def test_video_model_picks_the_family_from_model_index(wan_folder, tmp_path):
    cfg = TeacherConfig(video_model=str(wan_folder), local_files_only=True, video_resolution=RES)
    (teacher,) = build_teachers(cfg, torch.device("cpu"), ("video",), video_frames=9).values()
    assert isinstance(teacher, WanTeacher) and teacher.frames == 9 and teacher.resolution == RES

    other = tmp_path / "sd"
    other.mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*WanTransformer3DModel"):
        video_family(str(other))


def test_unet3d_video_model_is_still_the_unet3d_teacher(tmp_path):
    """A Zeroscope/ModelScope layout (UNet3DConditionModel, no pipeline class needed)."""
    from test_teachers_sd_video import scheduler, tiny_text_encoder, tiny_unet3d, tiny_vae
    from transformers import CLIPTokenizer

    from ayg.teachers.video import VideoTeacher

    root = tmp_path / "tiny-zeroscope"
    torch.manual_seed(0)
    tiny_unet3d().save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    tiny_text_encoder().save_pretrained(root / "text_encoder")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(
        root / "tokenizer"
    )
    scheduler().save_config(root / "scheduler")
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    cfg = TeacherConfig(video_model=str(root), local_files_only=True, video_resolution=(16, 16))
    (teacher,) = build_teachers(cfg, torch.device("cpu"), ("video",)).values()
    assert isinstance(teacher, VideoTeacher) and teacher.frames == 16


# -- stage 2 with the Wan teacher -----------------------------------------------------------------


def test_tiny_preset_stage2_end_to_end_through_the_cli(wan_folder, tmp_path, offline):
    """``ayg animate`` with the tiny preset and the Wan folder as teachers.video_model: the clip
    length (17), the resize size and the negative prompt come from the teacher."""
    from ayg.asset import Asset
    from ayg.cli import main

    out = tmp_path / "run"
    ply = Path(__file__).resolve().parents[2] / "src" / "ayg" / "examples" / "example.ply"
    sets = [
        "teachers.kind=real",
        f"teachers.video_model={wan_folder}",
        "teachers.video_resolution=[32, 32]",
        "teachers.local_files_only=true",
        "stage2.use_image=false",
        "output.preview=false",
    ]
    argv = ["animate", str(ply), "a red ball spinning", "--preset", "tiny", "--out", str(out)]
    argv += ["--device", "cpu", "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    asset = Asset.load(out / "asset.ayg")
    assert asset.objects[0].motion is not None
    records = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["phase"] == "stage2" and "vid_loss" in r]
    last = preset("tiny").stage2.steps - 1  # the tiny preset logs its last step
    assert [r["step"] for r in logged] == [last] and logged[0]["skipped_steps"] == 0
    assert logged[0]["vid_grad_norm"] > 0 and "im_loss" not in logged[0]


def test_run_stage2_with_wan_and_an_image_teacher(wan):
    """run_stage2 on F = 17 clips: fps/τ sampler, cameras and the image teacher's frame picks
    (3 random frames plus the middle one, index 8) follow the teacher's frame count."""
    from ayg.deformation import Motion
    from ayg.gaussians import GaussianCloud
    from ayg.stages import (
        RunContext,
        image_frame_indices,
        new_segment,
        run_stage2,
        stage2_defaults,
        stage2_samplers,
    )
    from ayg.teachers.toy import random_toy_teachers

    cfg = apply_overrides(preset("tiny"), ["stage2.steps=2"]).stage2
    resolved = stage2_defaults(cfg, wan)
    assert resolved.frames == F and resolved.negative_prompt == NEGATIVE_PROMPT
    fps_sampler, cam_sampler = stage2_samplers(resolved)
    fps, tau = fps_sampler.sample(3, torch.Generator().manual_seed(0))
    assert tau.shape == (3, F) and len(cam_sampler.sample(3, torch.Generator())) == 3 * F
    # C.3 pace, 0.1875/fps between frames: 16 intervals of a 17-frame clip span 3/fps
    torch.testing.assert_close(tau[:, -1] - tau[:, 0], 3.0 / fps)
    idx = image_frame_indices(4, F, 4, torch.Generator().manual_seed(0))
    assert (idx[:, -1] == 8).all() and all(len(set(row.tolist())) == 4 for row in idx)

    calls = count_calls(wan.transformer)
    cloud = GaussianCloud.init_sphere(
        n=64, radius=0.4, sh_degree=1, generator=torch.Generator().manual_seed(0)
    ).detached()
    teachers = {"video": wan, "image": random_toy_teachers(seed=0)["image"]}
    motion = Motion([new_segment(cfg, "base", "a red ball", torch.device("cpu"))])
    ctx = RunContext(device=torch.device("cpu"), backend="torch", progress=False)
    run_stage2("a red ball spinning", cfg, cloud, motion, teachers, ctx, seed=0)
    assert calls[0] == 2  # one batched call per step
    with pytest.raises(ValueError, match="takes 17 frames"):
        run_stage2("a red ball", apply_overrides(preset("tiny"), ["stage2.frames=16"]).stage2,
                   cloud, motion, teachers, ctx, seed=0)  # fmt: skip


def test_stage2_frames_and_video_resolution_overrides():
    from ayg.config import validate

    cfg = apply_overrides(
        preset("paper"), ["stage2.frames=17", "teachers.video_resolution=[240, 416]"]
    )
    assert cfg.stage2.frames == 17 and cfg.teachers.video_resolution == (240, 416)
    validate(cfg)
    assert apply_overrides(cfg, ["stage2.frames=null"]).stage2.frames is None
    for bad, needle in (
        ("stage2.frames=17.5", "integer"),
        ("teachers.video_resolution=7", "list"),
    ):
        with pytest.raises(ValueError, match=needle):
            apply_overrides(preset("paper"), [bad])
    with pytest.raises(ValueError, match="positive integers"):
        validate(apply_overrides(preset("paper"), ["teachers.video_resolution=[0, 416]"]))
    with pytest.raises(ValueError, match="real video teachers"):
        validate(apply_overrides(preset("toy"), ["teachers.video_resolution=[240, 416]"]))


def test_cli_frames_the_wan_teacher_cannot_take_is_one_line(wan_folder, tmp_path, capsys):
    from ayg.cli import main

    ply = Path(__file__).resolve().parents[2] / "src" / "ayg" / "examples" / "example.ply"
    sets = ["teachers.kind=real", f"teachers.video_model={wan_folder}", "stage2.frames=16"]
    sets += ["teachers.local_files_only=true", "stage2.use_image=false"]
    argv = ["animate", str(ply), "a red ball", "--preset", "tiny", "--out", str(tmp_path / "r")]
    argv += ["--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4k + 1 frames" in err[0]
    assert not (tmp_path / "r").exists()


def test_real_size_configs_for_the_gpu_benchmark(monkeypatch):
    """benchmarks/wan_configs.py builds the 1.3B teacher; on the meta device (no memory) its
    sizes and the real-size shapes through encode and predict_noise are checked."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import wan_configs

    meta = torch.device("meta")
    teacher = wan_configs.build_wan_teacher(meta, torch.float32)
    sizes = wan_configs.n_params(teacher)  # millions
    assert 1400 < sizes["transformer"] < 1450 and 120 < sizes["vae"] < 135
    assert 5600 < sizes["text"] < 5750  # UMT5-XXL's encoder
    assert teacher.frames == 17 and teacher.resolution == (480, 832) and teacher.shift == 3.0
    z = teacher.encode(torch.zeros(1, 17, 3, 160, 256, device=meta))
    assert z.shape == (1, 5, 16, 60, 104)
    emb = torch.zeros(3, 512, 4096, device=meta)
    t = torch.tensor([20, 500, 980], device=meta)
    assert teacher.predict_noise(z.expand(3, -1, -1, -1, -1), t, emb).shape == (3, 5, 16, 60, 104)
    tokens = wan_configs.ByteUMT5Tokenizer()(["a cat", ""], max_length=8)
    assert tokens.input_ids.tolist() == [
        [3 + 97, 3 + 32, 3 + 99, 3 + 97, 3 + 116, 1, 0, 0],
        [1] + [0] * 7,
    ]
    assert tokens.attention_mask.sum(1).tolist() == [6, 1]
