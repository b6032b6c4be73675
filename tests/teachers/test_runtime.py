"""The speed and memory levers of ayg.teachers.runtime keep the maths: the VAE encoder's
backward modes, the UNet wrapper, prompt priming, sync-free statistics and the lowvram preset,
checked against the plain eager path on tiny random models (CPU, float32)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_teachers_sd_video import (  # noqa: E402
    RES,
    scheduler,
    tiny_text_encoder,
    tiny_unet2d,
    tiny_unet3d,
    tiny_vae,
)

from ayg.config import preset, validate  # noqa: E402
from ayg.distill import (  # noqa: E402
    Conditioning,
    TeacherTerm,
    as_floats,
    compose,
    distill_loss,
    prime_prompts,
    term_prompts,
)
from ayg.teachers import runtime_of  # noqa: E402
from ayg.teachers.runtime import (  # noqa: E402
    NAIVE,
    FastUNet,
    Runtime,
    configure_teacher,
    default_compile_cache,
    use_compile_cache,
)
from ayg.teachers.stable_diffusion import (  # noqa: E402
    ENCODER_BACKWARDS,
    StableDiffusionTeacher,
    encode_frames,
)
from ayg.teachers.video import VideoTeacher  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import json

    from test_teachers_sd_video import L
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tok")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=L)


def make_sd(tokenizer) -> StableDiffusionTeacher:
    torch.manual_seed(0)
    parts = (tiny_unet2d(), tiny_vae(), tiny_text_encoder(), tokenizer, scheduler().alphas_cumprod)
    return StableDiffusionTeacher.from_components(*parts, resolution=RES)


def make_video(tokenizer) -> VideoTeacher:
    torch.manual_seed(1)
    parts = (tiny_unet3d(), tiny_vae(), tiny_text_encoder(), tokenizer, scheduler().alphas_cumprod)
    return VideoTeacher.from_components(*parts, resolution=RES, frames=4)


# -- the encoder's backward ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["convs", "lean", "recompute", "fused"])
@pytest.mark.parametrize("sample", [True, False])
def test_encoder_backward_modes_give_the_eager_latents_and_gradient(mode, sample):
    """Same latents, same posterior noise, same gradient as storing every activation; 7 frames
    in chunks of 3 (the last chunk short)."""
    torch.manual_seed(0)
    vae = tiny_vae().eval().requires_grad_(False)
    x = torch.rand(7, 3, 12, 20)
    g = torch.randn(7, 4, 8, 8)
    out = {}
    for m in ("keep", mode):
        xi = x.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(5)
        z = encode_frames(vae, xi, RES, gen, sample, backward=m, chunk=3)
        (z * g).sum().backward()
        out[m] = (z.detach(), xi.grad, gen.get_state())
    torch.testing.assert_close(out[mode][0], out["keep"][0], rtol=0, atol=1e-6)
    # chunks change the batch of each convolution, so float32 sums round differently
    torch.testing.assert_close(out[mode][1], out["keep"][1], rtol=1e-4, atol=2e-6)
    assert torch.equal(out[mode][2], out["keep"][2])  # the generator advanced the same way
    assert out["keep"][1].abs().max() > 0


def test_encoder_backward_is_checked():
    vae = tiny_vae().eval().requires_grad_(False)
    with pytest.raises(ValueError, match="encoder_backward must be one of keep, convs, lean"):
        encode_frames(vae, torch.rand(1, 3, 8, 8, requires_grad=True), RES, backward="fast")
    assert ENCODER_BACKWARDS == ("keep", "convs", "lean", "recompute", "fused")


def test_recompute_mode_runs_the_encoder_again_in_the_backward():
    """ "recompute" stores nothing inside the encoder: its forward runs once more per chunk."""
    vae = tiny_vae().eval().requires_grad_(False)
    calls = [0]
    vae.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = torch.rand(5, 3, 12, 12, requires_grad=True)
    z = encode_frames(vae, x, RES, sample=False, backward="recompute", chunk=2)
    assert calls[0] == 3  # chunks of 2, 2, 1
    z.sum().backward()
    assert calls[0] == 6
    z = encode_frames(vae, x, RES, sample=False, backward="recompute", chunk=5)
    z.sum().backward()
    assert calls[0] == 7  # 5 frames are one chunk: stored, not recomputed


# -- whole teacher terms under each runtime -----------------------------------------------------------


def stage2_gradient(video, sd, frames: torch.Tensor) -> torch.Tensor:
    """The stage-2 teacher part of a step (eq. 24 with the negative prompt and motion
    amplification, plus the image teacher on 2 frames of each clip), backpropagated to the
    frames; the same draws on every call."""
    gen = torch.Generator().manual_seed(11)
    x = frames.detach().requires_grad_(True)
    vid_term = TeacherTerm(negative_prompt="still", negative_weight=0.8, motion_amplification=24.0)
    fps = Conditioning(fps=torch.full((x.shape[0],), 4.0))
    parts = {
        "vid": distill_loss(video, vid_term, x, "a cat", 0, gen, fps, sync=False),
        "im": distill_loss(sd, TeacherTerm(), x[:, [0, 2]], "a cat", 0, gen, sync=False),
    }
    loss, _ = compose(parts, sync=False)
    loss.backward()
    return x.grad


@pytest.mark.parametrize(
    "runtime",
    [
        Runtime(encoder_backward="lean", encoder_chunk=3, channels_last=True, cuda_graphs=True),
        Runtime(encoder_backward="recompute", encoder_chunk=2),
        Runtime(encoder_backward="fused", cuda_graphs=True),
    ],
    ids=["lean+channels_last+graphs", "recompute", "fused+graphs"],
)
def test_step_gradient_on_the_frames_is_the_eager_one(tokenizer, runtime):
    video, sd = make_video(tokenizer), make_sd(tokenizer)
    frames = torch.rand(2, 4, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    ref = stage2_gradient(configure_teacher(video, NAIVE), configure_teacher(sd, NAIVE), frames)
    got = stage2_gradient(configure_teacher(video, runtime), configure_teacher(sd, runtime), frames)
    assert ref.abs().max() > 0
    # float32 rounding, scaled to the gradient (the CPU kernels' summation order is torch's)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-5 * float(ref.abs().max()))


# -- one encoder pass for two teachers ---------------------------------------------------------


def make_sd_sharing(tokenizer, video) -> StableDiffusionTeacher:
    """An image teacher whose VAE is an equal copy of ``video``'s (the SD autoencoder that
    UNet3D video models ship with), the UNet and text encoder its own."""
    import copy

    sd = make_sd(tokenizer)
    sd.vae = copy.deepcopy(video.vae)
    return sd


def test_same_encoder_compares_what_maps_pixels_to_latents(tokenizer):
    video = make_video(tokenizer)
    sd = make_sd_sharing(tokenizer, video)
    assert video.same_encoder(sd) and sd.same_encoder(video)
    with torch.no_grad():
        sd.vae.decoder.conv_in.weight.add_(1.0)  # the decoder is not used to encode
    assert video.same_encoder(sd)
    with torch.no_grad():
        sd.vae.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert not video.same_encoder(sd)
    assert not video.same_encoder(make_sd(tokenizer))  # another random VAE
    sd = make_sd_sharing(tokenizer, video)
    sd.resolution = (16, 24)
    assert not video.same_encoder(sd)
    sd = make_sd_sharing(tokenizer, video)
    sd.sample_latents = False
    assert not video.same_encoder(sd)
    sd = make_sd_sharing(tokenizer, video)
    sd.vae.register_to_config(scaling_factor=0.5)
    assert not video.same_encoder(sd)
    sd = make_sd_sharing(tokenizer, video)
    sd.vae.to(torch.float64)
    assert not video.same_encoder(sd)
    assert not video.same_encoder(object())


@pytest.mark.parametrize("sample", [True, False])
def test_a_shared_posterior_gives_the_gradient_and_draws_of_two_encoder_passes(tokenizer, sample):
    """The stage-2 teacher part with the image teacher's 2 frames per clip read from the video
    teacher's encoder pass: the gradient on the frames and the generator's state after the step
    are those of encoding the picked frames again."""
    video = make_video(tokenizer)
    sd = make_sd_sharing(tokenizer, video)
    video.sample_latents = sd.sample_latents = sample
    frames = torch.rand(2, 4, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    vid_term = TeacherTerm(negative_prompt="still", negative_weight=0.8, motion_amplification=24.0)
    fps = Conditioning(fps=torch.full((2,), 4.0))
    idx = torch.tensor([[0, 2], [3, 1]])
    out = {}
    for shared in (False, True):
        gen = torch.Generator().manual_seed(11)
        x = frames.clone().requires_grad_(True)
        picked = torch.gather(x, 1, idx[:, :, None, None, None].expand(-1, -1, 3, 12, 20))
        post = video.encode_posterior(x) if shared else None
        parts = {
            "vid": distill_loss(video, vid_term, x, "a cat", 0, gen, fps, posterior=post),
            "im": distill_loss(
                sd,
                TeacherTerm(),
                picked,
                "a cat",
                0,
                gen,
                posterior=None if post is None else post.frames(idx),
            ),
        }
        loss, stats = compose(parts)
        loss.backward()
        out[shared] = (x.grad, gen.get_state(), stats)
    scale = float(out[False][0].abs().max())
    assert scale > 0  # float32 rounding, scaled to the gradient
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=2e-6 * scale)
    assert torch.equal(out[True][1], out[False][1])
    assert out[True][2] == pytest.approx(out[False][2], rel=1e-5)


def test_a_shared_posterior_needs_every_frames_gradient(tokenizer):
    video = make_video(tokenizer)
    x = torch.rand(1, 4, 3, 12, 12)
    post = video.encode_posterior(x)
    with pytest.raises(ValueError, match="unset grad_frames"):
        distill_loss(video, TeacherTerm(grad_frames=2), x, "a cat", 0, posterior=post)
    with pytest.raises(ValueError, match="sequences × frames"):
        distill_loss(
            video, TeacherTerm(), x, "a cat", 0, posterior=post.frames(torch.tensor([[0]]))
        )
    with pytest.raises(ValueError, match="expects \\(B, 4, 3, H, W\\)"):
        video.encode_posterior(x[:, :3])


def test_stage2_loop_shares_the_encoder_pass_and_trains_the_same_field(
    tokenizer, monkeypatch, tmp_path
):
    """Two steps of run_stage2 with an image teacher whose VAE equals the video teacher's: the
    loop encodes each frame once (the encoder sees B·F frames a step, not B·F + B·k), says so in
    the end-of-phase line, and trains the field that the loop with two encoder passes trains."""
    import json

    from ayg.config import apply_overrides
    from ayg.deformation import Motion
    from ayg.gaussians import GaussianCloud
    from ayg.stages import LossLog, RunContext, new_segment, run_stage2
    from ayg.teachers.stable_diffusion import LatentTeacher

    sets = ["stage2.steps=2", "stage2.frames=4", "stage2.image_frames=2", "stage2.batch=2"]
    sets += ["stage2.width=20", "stage2.height=12"]
    cfg = apply_overrides(preset("tiny"), sets).stage2
    cloud = GaussianCloud.init_sphere(
        n=48, radius=0.4, sh_degree=0, generator=torch.Generator().manual_seed(0)
    ).detached()
    start = new_segment(cfg, "base", "a cat", torch.device("cpu")).field.state_dict()
    fields, encoded, ends = {}, {}, {}
    for share in (True, False):
        video = make_video(tokenizer)
        sd = make_sd_sharing(tokenizer, video)
        if not share:
            monkeypatch.setattr(LatentTeacher, "same_encoder", lambda self, other: False)
        seen = [0]
        for vae in (video.vae, sd.vae):
            vae.encoder.register_forward_hook(
                lambda m, args, out, seen=seen: seen.__setitem__(0, seen[0] + args[0].shape[0])
            )
        motion = Motion([new_segment(cfg, "base", "a cat", torch.device("cpu"))])
        path = tmp_path / f"losses_{share}.jsonl"
        ctx = RunContext(device=torch.device("cpu"), backend="torch", progress=False)
        ctx.log = LossLog(path)
        motion = run_stage2("a cat", cfg, cloud, motion, {"video": video, "image": sd}, ctx, 0)
        fields[share] = motion.segments[-1].field.state_dict()
        encoded[share] = seen[0]
        ends[share] = json.loads(path.read_text().splitlines()[-1])
        monkeypatch.undo()
    assert encoded[True] == 2 * (2 * 4)  # steps × B·F
    assert encoded[False] == 2 * (2 * 4 + 2 * 2)  # and the picked frames once more
    assert ends[True]["shared_encoder"] is True and ends[False]["shared_encoder"] is False
    assert all(0 < e["first_step_seconds"] <= e["seconds"] for e in ends.values())
    for k, v in fields[False].items():
        torch.testing.assert_close(fields[True][k], v, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(fields[True][k], v) for k, v in start.items())


def test_fast_unet_is_the_unet_off_cuda_and_configure_unwraps(tokenizer):
    sd = make_sd(tokenizer)
    plain = sd.unet
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    emb = sd.embed(["a cat", ""])
    with torch.no_grad():
        ref = plain(x, t, encoder_hidden_states=emb).sample
    configure_teacher(sd, Runtime(cuda_graphs=True))
    assert isinstance(sd.unet, FastUNet) and sd.unet.inner is plain
    assert sd.unet.config is plain.config
    with torch.no_grad():
        torch.testing.assert_close(sd.unet(x, t, encoder_hidden_states=emb).sample, ref)
    sd.unet.graphs[("stale",)] = object()
    sd.unet.to("cpu")  # moving the weights invalidates every captured graph
    assert sd.unet.graphs == {}
    configure_teacher(sd, Runtime(cuda_graphs=True, channels_last=True))
    assert sd.unet.inner is plain  # re-wrapped, not nested
    conv = plain.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    configure_teacher(sd, NAIVE)
    assert sd.unet is plain and plain.conv_in.weight.is_contiguous()


def test_configure_leaves_teachers_without_a_unet_alone():
    class Toy:
        pass

    toy = Toy()
    assert configure_teacher(toy, Runtime(encoder_backward="lean")) is toy
    assert not hasattr(toy, "encoder_backward")


# -- prompts, statistics ----------------------------------------------------------------------------


def test_prime_prompts_caches_every_branch_prompt_and_releases_the_text_encoder(tokenizer):
    sd = make_sd(tokenizer)
    term = TeacherTerm(view_guidance=3.0, negative_prompt="ugly", negative_weight=0.8)
    prompts = term_prompts(term, "a cat")
    assert prompts[:3] == ["a cat", "", "ugly"] and len(prompts) == 3 + 4  # + 4 view words
    prime_prompts(sd, term, "a cat")
    assert sd.prompts.encoder_calls == 1 and sd.text_encoder_released
    sd.activate()
    assert sd.text_encoder_released  # activate() leaves it where it is
    images = torch.rand(2, 1, 3, 12, 12)
    distill_loss(sd, term, images, "a cat", 0, views=["front view", "overhead view"])
    assert sd.prompts.encoder_calls == 1  # every branch came from the cache
    assert sd.embed(["a dog"]).shape[0] == 1  # a new prompt still works (on the CPU)
    assert sd.prompts.encoder_calls == 2


def test_sync_free_statistics_are_the_floats(tokenizer):
    sd = make_sd(tokenizer)
    images = torch.rand(2, 1, 3, 12, 12)
    _, floats = distill_loss(
        sd, TeacherTerm(), images, "a cat", 3, torch.Generator().manual_seed(0)
    )
    _, tensors = distill_loss(
        sd, TeacherTerm(), images, "a cat", 3, torch.Generator().manual_seed(0), sync=False
    )
    assert all(isinstance(v, float) for v in floats.values())
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in tensors.values())
    assert as_floats(tensors) == pytest.approx(floats, rel=1e-6)
    assert as_floats({"a": torch.tensor(2.5), "b": 3}) == {"a": 2.5, "b": 3}


# -- configuration ------------------------------------------------------------------------------------


def test_lowvram_preset_keeps_the_paper_settings_and_trades_time():
    low, paper = preset("lowvram"), preset("paper")
    validate(low)
    assert low.stage1 == paper.stage1 and low.stage2 == paper.stage2
    assert low.teachers.grad_frames is None  # every frame keeps its gradient
    assert low.teachers.encoder_backward == "recompute"
    assert runtime_of(low.teachers).encoder_backward == "recompute"
    assert runtime_of(paper.teachers) == Runtime(
        encoder_backward=paper.teachers.encoder_backward,
        encoder_chunk=paper.teachers.encoder_chunk,
        channels_last=paper.teachers.channels_last,
        cuda_graphs=paper.teachers.cuda_graphs,
        compile=paper.teachers.compile,
        cudnn_benchmark=paper.teachers.cudnn_benchmark,
        tf32=paper.teachers.tf32,
    )


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "encoder_backward",
            "fast",
            "'teachers.encoder_backward' must be keep, convs, lean, recompute or fused, got 'fast'",
        ),
        ("encoder_chunk", 0, "'teachers.encoder_chunk' must be an integer from 1 to 4096, got 0"),
        ("compile", "max", "'teachers.compile' must be one of none, default, reduce-overhead"),
        ("compile_cache", " ", "'teachers.compile_cache' must be a non-empty string or null"),
        ("compile_cache", __file__, "'teachers.compile_cache' must be a folder"),
    ],
)
def test_bad_runtime_settings_are_one_line_errors(field, value, message):
    cfg = preset("paper")
    setattr(cfg.teachers, field, value)
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_runtime_rejects_unknown_modes():
    with pytest.raises(ValueError, match="compile must be one of"):
        Runtime(compile="fastest")
    with pytest.raises(ValueError, match="encoder_chunk must be >= 1"):
        Runtime(encoder_chunk=0)


def test_a_unet_is_compiled_once_however_often_it_is_wrapped(tokenizer, monkeypatch, request):
    """Each stage loop configures its teachers again; the compiled module is reused, so a
    process traces and compiles each UNet once per mode (torch.compile stands in here for a
    counting identity: the CPU test machine has no compiler to run inductor)."""
    calls = []

    def fake_compile(module, **kw):
        calls.append((module, kw["mode"]))
        return module

    import torch._dynamo.config as dynamo

    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(torch, "compile", fake_compile)
    patch = dynamo.patch(**{limit: 8})  # torch's default; given back after the test
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    sd = make_sd(tokenizer)
    keys = set(sd.unet.state_dict())
    x = torch.randn(2, 4, 8, 8)
    emb = torch.randn(2, 8, sd.unet.config.cross_attention_dim)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = sd.unet(x, t, encoder_hidden_states=emb).sample
    for _ in range(3):
        configure_teacher(sd, Runtime(compile="default"))
        assert isinstance(sd.unet, FastUNet)
        with torch.no_grad():
            torch.testing.assert_close(sd.unet(x, t, encoder_hidden_states=emb).sample, ref)
    configure_teacher(sd, Runtime(compile="max-autotune-no-cudagraphs"))
    assert [mode for _, mode in calls] == ["default", "max-autotune-no-cudagraphs"]
    assert calls[0][0] is calls[1][0] is sd.unet.inner
    assert set(sd.unet.inner.state_dict()) == keys  # the cache is not a submodule
    assert getattr(dynamo, limit) >= 64  # room for a compiled graph per shape and phase


# -- the compile cache ---------------------------------------------------------------------------


def test_the_compile_cache_is_the_users_folder_unless_one_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    home_cache = tmp_path / "home" / ".cache" / "ayg" / "torch-compile"
    assert default_compile_cache() == str(home_cache)
    assert use_compile_cache() == str(home_cache) and home_cache.is_dir()
    assert torch._inductor.runtime.cache_dir_utils.cache_dir() == str(home_cache)  # torch's view

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_compile_cache() == str(tmp_path / "xdg" / "ayg" / "torch-compile")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's wins
    assert use_compile_cache() == str(tmp_path / "mine")
    assert use_compile_cache(str(tmp_path / "given")) == str(tmp_path / "given")  # config's wins
    assert torch._inductor.runtime.cache_dir_utils.cache_dir() == str(tmp_path / "given")


def test_compiling_teachers_use_the_configured_cache(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    sd = make_sd(tokenizer)
    configure_teacher(sd, Runtime(compile="none", compile_cache=str(tmp_path / "c")))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # nothing compiles: nothing is set
    configure_teacher(sd, Runtime(compile="default", compile_cache=str(tmp_path / "c")))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c")
    cfg = preset("paper")
    cfg.teachers.compile_cache = str(tmp_path / "d")
    validate(cfg)
    assert runtime_of(cfg.teachers).compile_cache == str(tmp_path / "d")


_COMPILE_CHILD = """
import json, sys, torch
from torch._dynamo.utils import counters
from ayg.teachers.runtime import compiled, use_compile_cache
use_compile_cache(sys.argv[1])
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
x = torch.randn(3, 8)
with torch.no_grad():
    torch.testing.assert_close(compiled(net, "default")(x), net(x))
print(json.dumps(dict(counters["inductor"])))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None, reason="inductor's CPU backend needs a C++ compiler"
)
def test_a_later_process_loads_the_compiled_code_from_the_cache(tmp_path):
    """Two processes compile the same module through ``compiled`` with one cache folder: the
    first compiles and stores, the second finds every graph in the cache (inductor's CPU
    backend stands in for CUDA's; the cache is the same)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"  # torch's default, whatever the caller's setting

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _COMPILE_CHILD, str(tmp_path / "cache")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first.get("fxgraph_cache_miss", 0) >= 1 and first.get("fxgraph_cache_hit", 0) == 0
    assert second.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"]
    assert second.get("fxgraph_cache_miss", 0) == 0
    assert any((tmp_path / "cache").rglob("*")), "nothing was written to the cache folder"
