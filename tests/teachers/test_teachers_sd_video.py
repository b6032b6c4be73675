"""The diffusers teachers (Stable Diffusion image teacher, UNet3D video teacher) on tiny,
randomly initialised models built here; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet3DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from ayg.distill import Conditioning, Teacher, TeacherTerm, distill_loss  # noqa: E402
from ayg.teachers.hub import TeacherNotAvailable, hub_file  # noqa: E402
from ayg.teachers.stable_diffusion import StableDiffusionTeacher, eps_from_prediction  # noqa: E402
from ayg.teachers.synthetic import write_pipeline, write_stand_in_tokenizer  # noqa: E402
from ayg.teachers.video import VideoTeacher, takes_fps  # noqa: E402

D = 32  # text width = cross-attention width
L = 16  # tokens
RES = (16, 16)  # teacher resolution; the tiny VAE downsamples by 2 -> 8×8 latents


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; extra threads only contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_stand_in_tokenizer(tmp_path_factory.mktemp("tok"), max_length=L)


def tiny_text_encoder() -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=60,
        hidden_size=D,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=L,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(cfg)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RES[0],
    )


def tiny_unet2d() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=D,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_unet3d() -> UNet3DConditionModel:
    return UNet3DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=D,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture
def sd(tokenizer):
    torch.manual_seed(0)
    return StableDiffusionTeacher.from_components(
        tiny_unet2d(),
        tiny_vae(),
        tiny_text_encoder(),
        tokenizer,
        scheduler().alphas_cumprod,
        resolution=RES,
    )


@pytest.fixture
def video(tokenizer):
    torch.manual_seed(0)
    return VideoTeacher.from_components(
        tiny_unet3d(),
        tiny_vae(),
        tiny_text_encoder(),
        tokenizer,
        scheduler().alphas_cumprod,
        resolution=RES,
        frames=4,
    )


def count_calls(module: torch.nn.Module) -> list[int]:
    counter = [0]

    def hook(*_):
        counter[0] += 1

    module.register_forward_hook(hook)
    return counter


# -- Stable Diffusion --------------------------------------------------------------------------------


def test_sd_shapes_and_protocol(sd):
    assert isinstance(sd, Teacher) and sd.kind == "image" and sd.frames == 1
    assert sd.dtype == torch.float32  # fp32 on the CPU, bf16 on CUDA
    images = torch.rand(2, 1, 3, 12, 20)
    z = sd.encode(images, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 1, 4, 8, 8) and z.dtype == torch.float32
    emb = sd.embed(["a red ball", ""])
    assert emb.shape == (2, L, D)
    eps = sd.predict_noise(torch.randn(2, 1, 4, 8, 8), torch.tensor([10, 900]), emb)
    assert eps.shape == (2, 1, 4, 8, 8)
    assert sd.alphas_cumprod().shape == (1000,) and sd.alphas_cumprod().dtype == torch.float32


def test_sd_encode_is_bilinear_resize_then_scaled_vae_mean(tokenizer):
    torch.manual_seed(0)
    vae = tiny_vae()
    teacher = StableDiffusionTeacher.from_components(
        tiny_unet2d(),
        vae,
        tiny_text_encoder(),
        tokenizer,
        scheduler().alphas_cumprod,
        resolution=RES,
        sample_latents=False,
    )
    images = torch.rand(1, 1, 3, 10, 14)
    x = torch.nn.functional.interpolate(
        images[:, 0], size=RES, mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        expected = vae.encode(2 * x - 1).latent_dist.mean * vae.config.scaling_factor
        got = teacher.encode(images)[:, 0]
    torch.testing.assert_close(got, expected)


def test_v_prediction_is_converted_to_eps():
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    a = torch.tensor([0.9, 0.5, 0.05]).view(3, 1, 1, 1)
    z = a.sqrt() * x + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x
    torch.testing.assert_close(eps_from_prediction(v, z, a, "v_prediction"), eps)
    torch.testing.assert_close(eps_from_prediction(x, z, a, "sample"), eps, atol=1e-4, rtol=1e-4)
    assert eps_from_prediction(eps, z, a, "epsilon") is eps
    with pytest.raises(ValueError):
        eps_from_prediction(eps, z, a, "flow")


def test_sd_v_prediction_teacher(sd):
    v_teacher = StableDiffusionTeacher.from_components(
        sd.unet,
        sd.vae,
        sd.text_encoder,
        sd.tokenizer,
        sd.alphas_cumprod(),
        prediction_type="v_prediction",
        resolution=RES,
    )
    noisy, t, emb = torch.randn(1, 1, 4, 8, 8), torch.tensor([700]), sd.embed(["a cat"])
    with torch.no_grad():
        v = sd.predict_noise(noisy, t, emb)  # the raw output (ε-teacher = identity)
        eps = v_teacher.predict_noise(noisy, t, emb)
    a = sd.alphas_cumprod()[700]
    torch.testing.assert_close(eps, a.sqrt() * v + (1 - a).sqrt() * noisy)


def test_sd_gradient_reaches_images(sd):
    images = torch.rand(1, 4, 3, 12, 12, requires_grad=True)
    term = TeacherTerm(weight=0.4, view_guidance=3.0)
    views = ["front view", "side view", "back view", "overhead view"]
    loss, stats = distill_loss(
        sd, term, images, "a cat", 0, torch.Generator().manual_seed(0), views=views
    )
    loss.backward()
    assert torch.isfinite(images.grad).all()
    assert (images.grad.flatten(2).abs().sum(-1) > 0).all()  # every view gets gradient
    assert not any(p.grad is not None for p in sd.unet.parameters())  # teacher frozen


def test_sd_gradient_is_zero_when_score_is_zero(sd):
    # prompt "" makes the conditional and unconditional branches identical: δ_cls = 0
    images = torch.rand(2, 1, 3, 12, 12, requires_grad=True)
    loss, _ = distill_loss(sd, TeacherTerm(), images, "", 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.count_nonzero(images.grad) == 0


def test_one_unet_forward_for_all_branches(sd):
    calls = count_calls(sd.unet)
    term = TeacherTerm(negative_prompt="ugly", negative_weight=0.8, view_guidance=3.0)
    images = torch.rand(2, 1, 3, 12, 12)
    distill_loss(sd, term, images, "a cat", 0, views=["front view", "back view"])
    assert calls[0] == 1


def test_embedding_cache(sd):
    calls = count_calls(sd.text_encoder)
    a = sd.embed(["a cat", ""])
    b = sd.embed(["", "a cat", "a cat"])
    assert calls[0] == 1
    torch.testing.assert_close(b[1], a[0])
    torch.testing.assert_close(b[0], a[1])
    images = torch.rand(1, 1, 3, 12, 12)
    distill_loss(sd, TeacherTerm(), images, "a cat", 0)
    distill_loss(sd, TeacherTerm(), images, "a cat", 1)
    assert calls[0] == 1  # "a cat" and "" were cached
    distill_loss(sd, TeacherTerm(negative_prompt="blurry", negative_weight=0.5), images, "a cat", 2)
    assert calls[0] == 2 and sd.prompts.encoder_calls == 2


def test_offload_and_activate(sd):
    sd.offload()
    assert not sd.active
    assert all(p.device.type == "cpu" for p in sd.unet.parameters())
    sd.embed(["a dog"])  # activates on use
    assert sd.active


# -- video ---------------------------------------------------------------------------------------------


def test_video_shapes_and_protocol(video):
    assert isinstance(video, Teacher) and video.kind == "video" and video.frames == 4
    assert not video.fps_input  # diffusers' UNet3DConditionModel has no fps input (Zeroscope)
    clips = torch.rand(2, 4, 3, 10, 16)
    z = video.encode(clips)
    assert z.shape == (2, 4, 4, 8, 8)
    emb = video.embed(["a cat", ""])
    eps = video.predict_noise(torch.randn(2, 4, 4, 8, 8), torch.tensor([5, 500]), emb)
    assert eps.shape == (2, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="expects"):
        video.encode(torch.rand(1, 3, 3, 16, 16))


def test_video_predict_noise_uses_bcfhw_layout(video):
    noisy = torch.randn(1, 4, 4, 8, 8)
    emb = video.embed(["a cat"])
    t = torch.tensor([300])
    with torch.no_grad():
        eps = video.predict_noise(noisy, t, emb)
        direct = video.unet(noisy.permute(0, 2, 1, 3, 4), t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(eps, direct.permute(0, 2, 1, 3, 4))


def test_video_frames_are_encoded_one_by_one(video):
    clips = torch.rand(1, 4, 3, 16, 16)
    with torch.no_grad():
        video.sample_latents = False
        z = video.encode(clips)
        z2 = video.encode(clips[:, [2, 0, 3, 1]])
    torch.testing.assert_close(z2, z[:, [2, 0, 3, 1]])


def test_video_grad_frames(video):
    clips = torch.rand(3, 4, 3, 16, 16, requires_grad=True)
    z = video.encode(clips, grad_frames=1, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, 4, 4, 8, 8)
    z.sum().backward()
    with_grad = clips.grad.flatten(2).abs().sum(-1) > 0  # (B, F)
    assert with_grad.sum(1).tolist() == [1, 1, 1]
    clips.grad = None
    video.encode(clips).sum().backward()
    assert (clips.grad.flatten(2).abs().sum(-1) > 0).all()


def test_video_distill_with_negative_and_motion_amplification(video):
    clips = torch.rand(2, 4, 3, 16, 16, requires_grad=True)
    calls = count_calls(video.unet)
    term = TeacherTerm(
        negative_prompt="low motion, static statue", negative_weight=0.8, motion_amplification=24.0
    )
    loss, stats = distill_loss(
        video, term, clips, "a cat walking", 0, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert calls[0] == 1
    assert torch.isfinite(clips.grad).all() and clips.grad.abs().sum() > 0


class FpsUNet(torch.nn.Module):
    """A UNet3D with an fps input (like the paper's video model): records what it got."""

    def __init__(self, unet: UNet3DConditionModel) -> None:
        super().__init__()
        self.unet = unet
        self.seen_fps = None

    def forward(self, sample, timestep, encoder_hidden_states, fps=None):
        self.seen_fps = fps
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


def test_video_passes_fps_when_the_unet_takes_it(tokenizer):
    torch.manual_seed(0)
    unet = FpsUNet(tiny_unet3d())
    assert takes_fps(unet)
    teacher = VideoTeacher.from_components(
        unet,
        tiny_vae(),
        tiny_text_encoder(),
        tokenizer,
        scheduler().alphas_cumprod,
        resolution=RES,
        frames=4,
    )
    clips = torch.rand(2, 4, 3, 16, 16)
    distill_loss(
        teacher, TeacherTerm(), clips, "a cat", 0, cond=Conditioning(fps=torch.tensor([4.0, 12.0]))
    )
    assert torch.equal(
        unet.seen_fps, torch.tensor([4.0, 12.0, 4.0, 12.0])
    )  # cond and uncond branches
    with pytest.raises(ValueError, match="fps"):
        teacher.predict_noise(torch.randn(1, 4, 4, 8, 8), torch.tensor([1]), teacher.embed(["x"]))


# -- loading -------------------------------------------------------------------------------------------


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache / "hub"


@pytest.mark.parametrize(
    "cls, model_id",
    [
        (StableDiffusionTeacher, "stabilityai/stable-diffusion-2-1-base"),
        (VideoTeacher, "cerspense/zeroscope_v2_576w"),
        (VideoTeacher, "ali-vilab/text-to-video-ms-1.7b"),
    ],
)
def test_offline_missing_model_raises_teacher_not_available(empty_offline_hub, cls, model_id):
    with pytest.raises(TeacherNotAvailable, match="download") as info:
        cls.from_pretrained(model_id, cache_dir=empty_offline_hub, local_files_only=True)
    message = str(info.value)
    assert model_id in message and "\n" not in message
    # HF_HUB_OFFLINE alone (local_files_only left to the environment) does the same
    with pytest.raises(TeacherNotAvailable):
        cls.from_pretrained(model_id, cache_dir=empty_offline_hub)
    with pytest.raises(TeacherNotAvailable, match=model_id):
        hub_file(model_id, "model_index.json", cache_dir=empty_offline_hub)


def test_from_pretrained_reads_a_local_diffusers_layout(tmp_path, tokenizer, empty_offline_hub):
    torch.manual_seed(0)
    root = tmp_path / "tiny-sd"
    unet, vae, text_encoder = tiny_unet2d(), tiny_vae(), tiny_text_encoder()
    write_pipeline(root, unet, vae, text_encoder, tokenizer, scheduler())  # safetensors
    teacher = StableDiffusionTeacher.from_pretrained(
        str(root), local_files_only=True, resolution=RES
    )
    assert teacher.prediction_type == "epsilon"
    torch.testing.assert_close(teacher.alphas_cumprod(), scheduler().alphas_cumprod)
    noisy, t = torch.randn(1, 1, 4, 8, 8), torch.tensor([400])
    emb = teacher.embed(["a cat"])
    with torch.no_grad():
        expected = unet(noisy[:, 0], t, encoder_hidden_states=emb).sample
        torch.testing.assert_close(teacher.predict_noise(noisy, t, emb)[:, 0], expected)
