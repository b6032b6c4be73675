"""GPU check that the fast runtimes compute the eager step: the gradient that the stage-2
teacher terms (video teacher with negative prompt and motion amplification, eq. 24, plus the
image teacher on 4 frames of each clip) send to the rendered frames, on the same draws, under
the paper preset's runtime and the lowvram preset's, against plain eager bf16 and an eager
float32 reference. Run on the accelerator machine:

    pytest -m gpu tests/benchmarks/test_step_gpu.py
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from ayg.cameras import Stage2CameraSampler  # noqa: E402
from ayg.config import preset  # noqa: E402
from ayg.distill import Conditioning, TeacherTerm, compose, distill_loss  # noqa: E402
from ayg.gaussians import GaussianCloud  # noqa: E402
from ayg.render import rasterize  # noqa: E402
from ayg.teachers import runtime_of  # noqa: E402
from ayg.teachers.runtime import NAIVE, FastUNet, configure_teacher  # noqa: E402
from ayg.teachers.stable_diffusion import StableDiffusionTeacher  # noqa: E402
from ayg.teachers.video import VideoTeacher  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
DEV = torch.device("cuda")
RES = (64, 96)  # teacher resolution: 16×24 latents through a 3-level VAE
D = 64  # text width


class ByteTokenizer:
    model_max_length = 16

    def __call__(self, prompts, max_length=None, **_):
        n = max_length or self.model_max_length
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, p in enumerate(prompts):
            toks = [1, *(2 + b % 90 for b in p.encode())][: n - 1] + [0]
            ids[row, : len(toks)] = torch.tensor(toks)
        return type("Tokens", (), {"input_ids": ids})()


def parts(unet_cls, blocks: tuple[str, str], up: tuple[str, str], seed: int) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = unet_cls(
        sample_size=16,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=blocks,
        up_block_types=up,
        cross_attention_dim=D,
        attention_head_dim=16 if unet_cls.__name__ == "UNet3DConditionModel" else 4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RES[0],
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=100,
            hidden_size=D,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=1,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return dict(unet=unet, vae=vae, text_encoder=text, tokenizer=ByteTokenizer(),
                alphas_cumprod=sched.alphas_cumprod)  # fmt: skip


@pytest.fixture(scope="module")
def modules():
    from diffusers import UNet2DConditionModel, UNet3DConditionModel

    image = parts(
        UNet2DConditionModel,
        ("CrossAttnDownBlock2D", "DownBlock2D"),
        ("UpBlock2D", "CrossAttnUpBlock2D"),
        seed=0,
    )
    video = parts(
        UNet3DConditionModel,
        ("CrossAttnDownBlock3D", "DownBlock3D"),
        ("UpBlock3D", "CrossAttnUpBlock3D"),
        seed=1,
    )
    return image, video


def teachers(modules, dtype: torch.dtype):
    image, video = (copy.deepcopy(m) for m in modules)
    sd = StableDiffusionTeacher.from_components(**image, device=DEV, dtype=dtype, resolution=RES)
    vid = VideoTeacher.from_components(**video, device=DEV, dtype=dtype, resolution=RES)
    return vid, sd


@pytest.fixture(scope="module")
def frames():
    """4 clips × 16 rendered frames of 40×64 (a random cloud, dynamic cameras)."""
    gen = torch.Generator().manual_seed(0)
    cloud = GaussianCloud.init_sphere(3000, 0.5, 2, 0.3, generator=gen, device=DEV)
    cams = Stage2CameraSampler(frames=16, width=64, height=40).sample(4, gen, DEV)
    with torch.no_grad():
        out = rasterize(cloud.means, cloud.scales, cloud.quats, cloud.opacity, cloud.sh, cams,
                        0.5, cloud.sh_degree, backend="torch")  # fmt: skip
    return out.rgb.view(4, 16, 3, 40, 64).clamp(0.0, 1.0)


def frame_gradient(
    vid, sd, frames: torch.Tensor, steps: int = 2, share: bool = False
) -> list[torch.Tensor]:
    """d(loss)/d(frames) of the stage-2 teacher terms on fixed draws, for ``steps`` steps (the
    second one replays the CUDA graphs captured in the first). ``share``: the image teacher's
    frames from the video teacher's encoder pass (their VAEs must be equal)."""
    cfg = preset("paper").stage2
    vid_term = TeacherTerm(
        negative_prompt=VideoTeacher.negative_prompt,  # stage2_defaults' for a UNet3D teacher
        negative_weight=cfg.omega_neg,
        motion_amplification=cfg.omega_ma,
    )
    out = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        x = frames.detach().clone().requires_grad_(True)
        fps = Conditioning(fps=torch.tensor([4.0, 4.0, 8.0, 12.0], device=DEV))
        idx = torch.tensor([[2, 7, 10, 13]] * 4)
        picked = x[:, idx[0]]  # (4, 4, 3, H, W): the image teacher sees 16 images
        post = vid.encode_posterior(x) if share else None
        im_post = None if post is None else post.frames(idx)
        parts_ = {
            "vid": distill_loss(
                vid, vid_term, x, "a corgi running", step, gen, fps, sync=False, posterior=post
            ),
            "im": distill_loss(
                sd, TeacherTerm(), picked, "a corgi running", step, gen, sync=False,
                posterior=im_post,
            ),
        }  # fmt: skip
        loss, _ = compose(parts_, sync=False)
        loss.backward()
        out.append(x.grad.float())
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def references(modules, frames):
    torch.backends.cudnn.benchmark = False
    ref32 = frame_gradient(
        *[configure_teacher(t, NAIVE) for t in teachers(modules, torch.float32)], frames
    )
    naive = frame_gradient(
        *[configure_teacher(t, NAIVE) for t in teachers(modules, torch.bfloat16)], frames
    )
    return ref32, naive


@pytest.mark.parametrize(
    "name", ["paper", "lowvram", "paper+eager", "paper+lean+eager", "paper+nhwc+eager"]
)
def test_fast_runtime_gradient_on_the_frames_matches_eager(modules, frames, references, name):
    """A preset's runtime (paper: the fused encoders and compiled UNets), +eager: with the
    UNets' forward not compiled (``teachers.compile=none``), +lean: with
    ``teachers.encoder_backward=lean``, +nhwc: with the VAEs channels-last
    (``teachers.encoder_channels_last``, the fused kernels on NHWC tensors)."""
    ref32, naive = references
    base, *levers = name.split("+")
    rt = runtime_of(preset(base).teachers)
    if "eager" in levers:
        rt = dataclasses.replace(rt, compile="none")
    if "lean" in levers:
        rt = dataclasses.replace(rt, encoder_backward="lean")
    if "nhwc" in levers:
        rt = dataclasses.replace(rt, encoder_channels_last=True)
    vid, sd = teachers(modules, torch.bfloat16)
    for t in (vid, sd):
        configure_teacher(t, rt)
    assert isinstance(vid.unet, FastUNet) == (rt.cuda_graphs or rt.compile != "none")
    got = frame_gradient(vid, sd, frames)
    for g, r32, nv in zip(got, ref32, naive, strict=True):
        assert torch.isfinite(g).all() and r32.norm() > 0
        floor = rel(nv, r32)  # what bf16 itself costs against float32
        assert floor < 0.5, f"bf16 eager is {floor:.3f} from float32: the check is not meaningful"
        assert rel(g, r32) <= 2.0 * floor + 1e-3, (rel(g, r32), floor)
        assert rel(g, nv) <= 3.0 * floor + 1e-3, (rel(g, nv), floor)
    torch.backends.cudnn.benchmark = False


def test_shared_encoder_pass_gives_the_two_pass_gradient(modules, frames, references):
    """The image teacher given the video teacher's VAE: reading its 16 frames from the video
    teacher's encoder pass (paper runtime, bf16) sends the frames the gradient of encoding them
    again, within what bf16 costs."""
    ref32, naive = references
    image, video = modules
    image = dict(image, vae=copy.deepcopy(video["vae"]))
    rt = runtime_of(preset("paper").teachers)
    out = {}
    for share in (False, True):
        vid, sd = teachers((image, video), torch.bfloat16)
        for t in (vid, sd):
            configure_teacher(t, rt)
        assert vid.same_encoder(sd)
        out[share] = frame_gradient(vid, sd, frames, share=share)
    for g, g2, r32, nv in zip(out[True], out[False], ref32, naive, strict=True):
        floor = rel(nv, r32)
        assert torch.isfinite(g).all() and floor < 0.5
        assert rel(g, g2) <= floor + 1e-3, (rel(g, g2), floor)


def test_cuda_graph_replay_equals_the_eager_forward(modules):
    vid, _ = teachers(modules, torch.bfloat16)
    plain = vid.unet
    configure_teacher(vid, runtime_of(preset("paper").teachers))
    emb = vid.embed(["a cat", ""])
    t = torch.tensor([100, 700], device=DEV)
    for seed in (0, 1):  # the second call replays with new inputs copied in
        x = torch.randn(2, 4, 16, 16, 24, generator=torch.Generator().manual_seed(seed)).to(DEV)
        with torch.no_grad():
            ref = plain(x.bfloat16(), t, encoder_hidden_states=emb).sample.float()
            got = vid.unet(x.bfloat16(), t, encoder_hidden_states=emb).sample.float()
        assert len(vid.unet.graphs) == 1
        assert rel(got, ref) < 2e-2
    torch.backends.cudnn.benchmark = False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_group_norm_silu_kernels_on_cuda(dtype):
    """The Triton kernels at a full-resolution encoder size (8 frames × 128 channels at
    320×512: rows of 655,360 elements, split over many programs) against float64 GroupNorm +
    SiLU: float32 to 1e-5 of the largest value, bf16 within bf16 rounding."""
    import torch.nn.functional as F

    from ayg.teachers.fused_encoder import group_norm_silu

    gen = torch.Generator(device=DEV).manual_seed(0)
    x = (torch.randn(8, 128, 320, 512, device=DEV, generator=gen) * 2 + 1).to(dtype)
    w = torch.randn(128, device=DEV, generator=gen).to(dtype)
    b = torch.randn(128, device=DEV, generator=gen).to(dtype)
    dy = torch.randn(x.shape, device=DEV, generator=gen).to(dtype)
    out = {}
    for name, fn, inp in (
        ("fused", lambda t: group_norm_silu(t, 32, w, b, 1e-6), x),
        ("ref", lambda t: F.silu(F.group_norm(t, 32, w.double(), b.double(), 1e-6)), x.double()),
    ):
        t = inp.detach().clone().requires_grad_(True)
        y = fn(t)
        y.backward(dy.to(y.dtype))
        out[name] = (y.detach().double(), t.grad.double())
        del t, y
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    for got, ref in zip(out["fused"], out["ref"], strict=True):
        assert float((got - ref).abs().max() / ref.abs().max()) < tol
