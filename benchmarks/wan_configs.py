"""Real-size Wan 2.1 T2V 1.3B configurations and a random-weight Wan teacher of that size, for
GPU step benchmarks of stage 2 (AYG sec. 3.2, table 4) without downloading the weights.

The values are those of the public ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` repository's config
files (the Wan 2.1 technical report's 1.3B model: 30 blocks of width 1536 = 12 heads × 128, FFN
8960, text width 4096; its causal VAE: base width 96, multipliers 1-2-4-4, 16 latent channels,
4× in time and 8× in space; text encoder: the encoder of ``google/umt5-xxl``; scheduler: UniPC
with flow sigmas, shift 3.0).

    PYTHONPATH=src python -c "import sys; sys.path.insert(0, 'benchmarks'); \\
        import torch, wan_configs; t = wan_configs.build_wan_teacher(torch.device('cuda'))"

Run as a script it measures the activations the real-size VAE encoder keeps for its backward
on one 17-frame clip (the memory that per-clip checkpointing in ``WanTeacher`` bounds), at two
small sizes on the CPU, and extrapolates linearly in pixels:

    PYTHONPATH=src python benchmarks/wan_configs.py [--sizes 32x48,64x96] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from ayg.teachers.wan import FRAMES, RESOLUTION, TEXT_LENGTH, WanTeacher

SHIFT = 3.0  # scheduler/scheduler_config.json: flow_shift


def wan_t2v_1_3b_transformer_config() -> dict:
    """``transformer/config.json`` of Wan2.1-T2V-1.3B-Diffusers (WanTransformer3DModel)."""
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=12,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=8960,
        num_layers=30,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    )


def wan_vae_config() -> dict:
    """``vae/config.json`` of Wan2.1-T2V-1.3B-Diffusers (AutoencoderKLWan, the Wan 2.1 VAE)."""
    return dict(
        base_dim=96,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=[
            -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
        ],
        latents_std=[
            2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
        ],
    )  # fmt: skip


def umt5_xxl_encoder_config():
    """``text_encoder/config.json``: the encoder half of google/umt5-xxl (UMT5EncoderModel)."""
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


class ByteUMT5Tokenizer:
    """Stand-in for the UMT5 tokenizer (no download): UTF-8 bytes as ids 3..258, then </s> (1),
    padded with 0 to ``max_length``; returns input_ids and attention_mask like the real one."""

    model_max_length = TEXT_LENGTH

    def __call__(self, prompts, max_length=None, **_):
        n = max_length or self.model_max_length
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        mask = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, p in enumerate(prompts):
            toks = [3 + b for b in p.encode()][: n - 1] + [1]
            ids[row, : len(toks)] = torch.tensor(toks)
            mask[row, : len(toks)] = 1
        return type("Tokens", (), {"input_ids": ids, "attention_mask": mask})()


# The same architecture at toy width (a CPU check of the scripts that use it): 5 frames at 16×16
TINY_FRAMES, TINY_RESOLUTION = 5, (16, 16)


def tiny_configs() -> tuple[dict, dict, Any]:
    from transformers import UMT5Config

    transformer = dict(
        wan_t2v_1_3b_transformer_config(),
        num_attention_heads=2,
        attention_head_dim=8,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    vae = dict(wan_vae_config(), base_dim=8, num_res_blocks=1)
    small = dict(vocab_size=260, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    text = UMT5Config(**dict(umt5_xxl_encoder_config().to_dict(), **small))
    return transformer, vae, text


def build_wan_parts(device: torch.device, tiny: bool = False) -> dict:
    """transformer, vae, text_encoder, tokenizer of real size (or tiny) with random weights."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    if tiny:
        transformer, vae, text = tiny_configs()
    else:
        transformer, vae = wan_t2v_1_3b_transformer_config(), wan_vae_config()
        text = umt5_xxl_encoder_config()
    with torch.device(device):  # initialise where the weights will live (seconds, not minutes)
        return dict(
            transformer=WanTransformer3DModel(**transformer),
            vae=AutoencoderKLWan(**vae),
            text_encoder=UMT5EncoderModel(text),
            tokenizer=ByteUMT5Tokenizer(),
        )


def build_wan_teacher(
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    frames: int | None = None,
    resolution: tuple[int, int] | None = None,
    tiny: bool = False,
    **kwargs,
) -> WanTeacher:
    """A Wan 2.1 T2V 1.3B teacher with random weights (bf16 on CUDA by default): real size, or
    with ``tiny`` the same layout at toy width, 5 frames at 16×16."""
    frames = frames or (TINY_FRAMES if tiny else FRAMES)
    resolution = resolution or (TINY_RESOLUTION if tiny else RESOLUTION)
    if tiny:
        kwargs.setdefault("text_length", 16)
    return WanTeacher.from_components(
        **build_wan_parts(device, tiny),
        shift=SHIFT,
        device=device,
        dtype=dtype,
        frames=frames,
        resolution=resolution,
        **kwargs,
    )


def n_params(teacher: WanTeacher) -> dict[str, float]:
    """Parameters of each part, in millions."""
    parts = {"transformer": teacher.transformer, "vae": teacher.vae, "text": teacher.text_encoder}
    return {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in parts.items()}


def saved_encoder_bytes(vae, height: int, width: int, frames: int = FRAMES) -> int:
    """Bytes the VAE encoder keeps for the backward of one clip (3, frames, height, width): the
    distinct storages its autograd graph saves, the weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    param = next(vae.parameters())
    x = torch.rand(1, 3, frames, height, width, device=param.device, dtype=param.dtype)
    x.requires_grad_(True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vae.encode(x * 2 - 1).latent_dist.mean.float().sum().backward()
    return sum(saved.values())


def main() -> None:
    from diffusers import AutoencoderKLWan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32x48,64x96", help="two HxW clip sizes to measure")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    try:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        if len(sizes) != 2 or any(len(s) != 2 or min(s) <= 0 for s in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"--sizes takes two HxW sizes, e.g. 32x48,64x96; got {args.sizes!r}")
    device = torch.device(args.device)
    with torch.device(device):
        vae = AutoencoderKLWan(**wan_vae_config())
    vae = vae.eval().requires_grad_(False).to(getattr(torch, args.dtype))
    points = []
    for h, w in sizes:
        t0 = time.perf_counter()
        b = saved_encoder_bytes(vae, h, w)
        points.append((h * w, b))
        s = time.perf_counter() - t0
        print(
            f"{FRAMES}x{h}x{w}: {b / 2**20:.1f} MiB ({b / (h * w) / 2**10:.1f} KiB/pixel), {s:.0f} s"
        )
    (p0, b0), (p1, b1) = points
    slope = (b1 - b0) / (p1 - p0)
    for h, w in ((480, 832), (240, 416)):
        print(
            f"extrapolated {FRAMES}x{h}x{w}: {(b0 + slope * (h * w - p0)) / 2**30:.1f} GiB per clip"
        )


if __name__ == "__main__":
    main()
