"""Random-weight teachers in the on-disk layouts users download (AYG sec. 3.2, C.7), for tests
and benchmarks that load them through the real loaders without downloading anything.

* MVDream's official checkpoint (``MVDream/MVDream:sd-v2.1-base-4view.pt``): the ldm state dict
  ``model.diffusion_model.*`` (``openaimodel.MultiViewUNetModel``), ``first_stage_model.*`` (ldm's
  ``AutoencoderKL``) and ``cond_stage_model.model.*`` (OpenCLIP's text tower; MVDream deletes the
  visual one), plus ldm's schedule buffers. Keys and shapes are enumerated here from those
  module definitions, independently of the converter's tables in ``ayg.teachers.mvdream``, so
  that loading this checkpoint checks the conversion.
* MVDream's diffusers port in MVDream's own UNet layout (``ashawkey/mvdream-sd2.1-diffusers``):
  ``unet/`` (ldm-style ``config.json``, ldm tensor names), ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``.
* a diffusers pipeline folder (Stable Diffusion 2.1 base, Zeroscope v2): ``unet/ vae/
  text_encoder/ tokenizer/ scheduler/ model_index.json``.
* a Wan text-to-video folder (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``transformer/ vae/
  text_encoder/ tokenizer/ scheduler/ model_index.json`` as ``WanPipeline`` saves them.
* a CLIP BPE tokenizer with a tiny vocabulary, standing in for OpenCLIP's 49408 tokens, and a
  unigram T5 tokenizer over letters, standing in for UMT5's 256,384 tokens.
* a Hugging Face cache entry holding a local folder, for loaders that take only a model id.

Folders are written under a temporary name and renamed into place, so a half-written model is
never mistaken for a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ayg.teachers.mvdream import (
    MVDreamArch,
    _build_loaded,
    _fit_prefix,
    convert_ldm_vae,
    convert_open_clip_text,
)

# ----------------------------------------------------------------------------------------------
# The official key layout, enumerated from MVDream's / ldm's / OpenCLIP's module definitions


class _Shapes(dict):
    def lin(self, name, i, o, bias=True):
        self[f"{name}.weight"] = (o, i)
        if bias:
            self[f"{name}.bias"] = (o,)

    def conv(self, name, i, o, k):
        self[f"{name}.weight"] = (o, i, k, k)
        self[f"{name}.bias"] = (o,)

    def norm(self, name, c):
        self[f"{name}.weight"] = (c,)
        self[f"{name}.bias"] = (c,)


def ldm_unet_shapes(a: MVDreamArch) -> dict[str, tuple[int, ...]]:
    """``model.diffusion_model.*`` of MultiViewUNetModel (use_linear_in_transformer, GEGLU ff)."""
    s, mc = _Shapes(), a.model_channels
    temb = 4 * mc

    def resblock(p, i, o):
        s.norm(f"{p}.in_layers.0", i)
        s.conv(f"{p}.in_layers.2", i, o, 3)
        s.lin(f"{p}.emb_layers.1", temb, o)
        s.norm(f"{p}.out_layers.0", o)
        s.conv(f"{p}.out_layers.3", o, o, 3)
        if i != o:
            s.conv(f"{p}.skip_connection", i, o, 1)

    def transformer(p, c):
        s.norm(f"{p}.norm", c)
        s.lin(f"{p}.proj_in", c, c)
        for d in range(a.transformer_depth):
            b = f"{p}.transformer_blocks.{d}"
            for att, kv in (("attn1", c), ("attn2", a.context_dim)):
                s.lin(f"{b}.{att}.to_q", c, c, bias=False)
                s.lin(f"{b}.{att}.to_k", kv, c, bias=False)
                s.lin(f"{b}.{att}.to_v", kv, c, bias=False)
                s.lin(f"{b}.{att}.to_out.0", c, c)
            s.lin(f"{b}.ff.net.0.proj", c, 8 * c)
            s.lin(f"{b}.ff.net.2", 4 * c, c)
            for n in (1, 2, 3):
                s.norm(f"{b}.norm{n}", c)
        s.lin(f"{p}.proj_out", c, c)

    s.lin("time_embed.0", mc, temb)
    s.lin("time_embed.2", temb, temb)
    s.lin("camera_embed.0", a.camera_dim, temb)
    s.lin("camera_embed.2", temb, temb)
    s.conv("input_blocks.0.0", a.latent_channels, mc, 3)
    chans, ch, ds, i = [mc], mc, 1, 1
    for level, mult in enumerate(a.channel_mult):
        for _ in range(a.num_res_blocks):
            resblock(f"input_blocks.{i}.0", ch, mult * mc)
            ch = mult * mc
            if ds in a.attention_resolutions:
                transformer(f"input_blocks.{i}.1", ch)
            chans.append(ch)
            i += 1
        if level != len(a.channel_mult) - 1:
            s.conv(f"input_blocks.{i}.0.op", ch, ch, 3)
            chans.append(ch)
            i += 1
            ds *= 2
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    i = 0
    for level, mult in reversed(list(enumerate(a.channel_mult))):
        for j in range(a.num_res_blocks + 1):
            resblock(f"output_blocks.{i}.0", ch + chans.pop(), mult * mc)
            ch = mult * mc
            k = 1
            if ds in a.attention_resolutions:
                transformer(f"output_blocks.{i}.1", ch)
                k = 2
            if level and j == a.num_res_blocks:
                s.conv(f"output_blocks.{i}.{k}.conv", ch, ch, 3)
                ds //= 2
            i += 1
    s.norm("out.0", ch)
    s.conv("out.2", mc, a.latent_channels, 3)
    return dict(s)


def ldm_vae_shapes(a: MVDreamArch) -> dict[str, tuple[int, ...]]:
    """``first_stage_model.*`` of ldm's AutoencoderKL (Encoder / Decoder, 1×1-conv attention)."""
    s, ch, mult, z, nrb = (
        _Shapes(),
        a.vae_ch,
        a.vae_ch_mult,
        a.latent_channels,
        a.vae_num_res_blocks,
    )

    def res(p, i, o):
        s.norm(f"{p}.norm1", i)
        s.conv(f"{p}.conv1", i, o, 3)
        s.norm(f"{p}.norm2", o)
        s.conv(f"{p}.conv2", o, o, 3)
        if i != o:
            s.conv(f"{p}.nin_shortcut", i, o, 1)

    def mid(p, c):
        res(f"{p}.mid.block_1", c, c)
        s.norm(f"{p}.mid.attn_1.norm", c)
        for q in ("q", "k", "v", "proj_out"):
            s.conv(f"{p}.mid.attn_1.{q}", c, c, 1)
        res(f"{p}.mid.block_2", c, c)

    s.conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            s.conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid("encoder", cin)
    s.norm("encoder.norm_out", cin)
    s.conv("encoder.conv_out", cin, 2 * z, 3)
    s.conv("quant_conv", 2 * z, 2 * z, 1)
    s.conv("post_quant_conv", z, z, 1)
    cin = ch * mult[-1]
    s.conv("decoder.conv_in", z, cin, 3)
    mid("decoder", cin)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            s.conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    s.norm("decoder.norm_out", cin)
    s.conv("decoder.conv_out", cin, 3, 3)
    return dict(s)


def open_clip_shapes(a: MVDreamArch) -> dict[str, tuple[int, ...]]:
    """``cond_stage_model.model.*`` of OpenCLIP's text tower (visual tower deleted by MVDream)."""
    s, w = _Shapes(), a.text_width
    s["token_embedding.weight"] = (a.text_vocab, w)
    s["positional_embedding"] = (a.text_context, w)
    for n in range(a.text_layers):
        p = f"transformer.resblocks.{n}"
        s.norm(f"{p}.ln_1", w)
        s[f"{p}.attn.in_proj_weight"] = (3 * w, w)
        s[f"{p}.attn.in_proj_bias"] = (3 * w,)
        s.lin(f"{p}.attn.out_proj", w, w)
        s.norm(f"{p}.ln_2", w)
        s.lin(f"{p}.mlp.c_fc", w, 4 * w)
        s.lin(f"{p}.mlp.c_proj", 4 * w, w)
    s.norm("ln_final", w)
    s["text_projection"] = (w, w)
    s["logit_scale"] = ()
    return dict(s)


def synthetic_checkpoint(
    a: MVDreamArch,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Random tensors (fan-in scaled; norm weights near 1) under the official prefixes, plus
    ldm's schedule buffers. Drawn in float32 from a generator on ``device`` (a real-size
    checkpoint is drawn in seconds on a GPU), then cast to ``dtype``."""
    g = torch.Generator(device=device).manual_seed(seed)
    state: dict[str, Tensor] = {}
    for prefix, shapes in (
        ("model.diffusion_model.", ldm_unet_shapes(a)),
        ("first_stage_model.", ldm_vae_shapes(a)),
        ("cond_stage_model.model.", open_clip_shapes(a)),
    ):
        for name, shape in shapes.items():
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            value = torch.randn(shape, generator=g, device=device) / math.sqrt(fan_in)
            if len(shape) == 1 and ("norm" in name or "ln_" in name):
                value = 1.0 + 0.1 * value
            state[prefix + name] = value.to(dtype)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return state


# ----------------------------------------------------------------------------------------------
# Tokenizer and scheduler


def write_stand_in_tokenizer(folder: str | os.PathLike, max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` over lower-case letters and ``,`` (ids < 60) saved to ``folder``
    (loadable with ``CLIPTokenizer.from_pretrained``); returns it. Any prompt tokenizes (other
    characters become the end token); ids fit every text encoder of vocabulary >= 60."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(
            str(Path(tmp) / "vocab.json"),
            str(Path(tmp) / "merges.txt"),
            model_max_length=max_length,
        )
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def stand_in_t5_tokenizer(max_length: int = 512) -> Any:
    """A unigram ``T5Tokenizer`` over lower-case letters and ``,`` (word-initial and inner
    pieces, ids < 60), built offline, standing in for UMT5's tokenizer: every prompt tokenizes
    and the ids fit any UMT5 encoder's vocabulary. ``max_length``: Wan's 512 text tokens."""
    import string

    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in string.ascii_lowercase + ","]
    vocab += [("▁" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def flow_scheduler(shift: float = 3.0) -> Any:
    """The scheduler ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` ships: UniPC over flow sigmas with
    ``flow_shift`` 3.0 (the teacher reads only the flow schedule from it)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=shift,
    )


def ldm_scheduler(kind: str = "DDPMScheduler") -> Any:
    """The noise schedule of SD 2.1 base, MVDream and Zeroscope (ldm's "linear" in √β,
    ε-prediction) as the diffusers scheduler class ``kind`` their folders ship (SD 2.1 base:
    PNDMScheduler, Zeroscope: DDIMScheduler); the teachers read only the schedule."""
    import diffusers

    return getattr(diffusers, kind)(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )


# ----------------------------------------------------------------------------------------------
# Folders


@contextlib.contextmanager
def _new_folder(folder: Path) -> Iterator[Path]:
    """A temporary sibling of ``folder`` that replaces it once the block has finished."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cast(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """In ``dtype`` when given, then on the CPU (where serialisation copies from): cast where
    the weights are, move half the bytes. Changes ``module`` in place."""
    if dtype is not None:
        module = module.to(dtype)
    return module.to("cpu")


def write_pipeline(
    folder: str | os.PathLike,
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    scheduler: Any,
    pipeline_class: str = "StableDiffusionPipeline",
    dtype: torch.dtype | None = None,
) -> Path:
    """A diffusers pipeline folder (safetensors; weights in ``dtype`` when given, e.g. the
    fp16 most users download)."""
    folder = Path(folder)
    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    with _new_folder(folder) as tmp:
        for name, module in parts.items():
            _cast(module, dtype).save_pretrained(str(tmp / name))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        scheduler.save_config(str(tmp / "scheduler"))
        index = {"_class_name": pipeline_class}
        for name, obj in {**parts, "tokenizer": tokenizer, "scheduler": scheduler}.items():
            library = (
                "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
            )
            index[name] = [library, type(obj).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_wan_pipeline(
    folder: str | os.PathLike,
    transformer: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Any,
    shift: float = 3.0,
    dtype: torch.dtype | None = None,
) -> Path:
    """A Wan text-to-video folder as ``WanPipeline.save_pretrained`` writes it (safetensors;
    weights in ``dtype`` when given), with ``flow_scheduler(shift)``."""
    from diffusers import WanPipeline

    folder = Path(folder)
    parts = {k: _cast(m, dtype) for k, m in (("transformer", transformer), ("vae", vae))}
    with _new_folder(folder) as tmp:
        pipe = WanPipeline(
            tokenizer=tokenizer,
            text_encoder=_cast(text_encoder, dtype),
            scheduler=flow_scheduler(shift),
            **parts,
        )
        pipe.save_pretrained(str(tmp))
    return folder


def write_mvdream_port(
    folder: str | os.PathLike,
    state: Mapping[str, Tensor],
    arch: MVDreamArch,
    tokenizer: Any,
    dtype: torch.dtype | None = None,
) -> Path:
    """MVDream's diffusers port from an official state dict: the UNet keeps MVDream's own
    module layout and tensor names with an ldm-style ``unet/config.json``; the VAE and the text
    encoder are diffusers / transformers modules."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    folder = Path(folder)
    prefix = "model.diffusion_model."
    unet = {
        k.removeprefix(prefix): v.detach().to("cpu", dtype or v.dtype).contiguous()
        for k, v in state.items()
        if k.startswith(prefix)
    }
    config = {
        "_class_name": "MultiViewUNetModel",
        "image_size": arch.image_size // 2 ** (len(arch.vae_ch_mult) - 1),
        "in_channels": arch.latent_channels,
        "out_channels": arch.latent_channels,
        "model_channels": arch.model_channels,
        "channel_mult": list(arch.channel_mult),
        "num_res_blocks": arch.num_res_blocks,
        "attention_resolutions": list(arch.attention_resolutions),
        "num_head_channels": arch.num_head_channels,
        "transformer_depth": arch.transformer_depth,
        "context_dim": arch.context_dim,
        "camera_dim": arch.camera_dim,
    }
    vae = _build_loaded(lambda: AutoencoderKL(**arch.vae_config()), convert_ldm_vae(state, arch))
    with torch.device("meta"):  # only to see whether this transformers nests ``text_model.``
        probe = CLIPTextModel(arch.text_config())
    text = _fit_prefix(convert_open_clip_text(state, arch), probe)
    text_encoder = _build_loaded(lambda: CLIPTextModel(arch.text_config()), text)
    with _new_folder(folder) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "unet" / "config.json").write_text(json.dumps(config, indent=2))
        save_file(unet, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        _cast(vae, dtype).save_pretrained(str(tmp / "vae"))
        _cast(text_encoder, dtype).save_pretrained(str(tmp / "text_encoder"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        ldm_scheduler().save_config(str(tmp / "scheduler"))
        index = {
            "_class_name": "MVDreamPipeline",
            "unet": ["mv_unet", "MultiViewUNetModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", type(tokenizer).__name__],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def register_in_hub_cache(
    cache_dir: str | os.PathLike,
    model_id: str,
    folder: str | os.PathLike,
    include: Sequence[str] | None = None,
) -> Path:
    """Copy ``folder`` (or its sub-paths ``include``) into a Hugging Face hub cache as the
    ``main`` revision of ``model_id``, as ``hf download`` would leave it, so that loaders given
    only the id find it offline (``HF_HUB_CACHE=cache_dir``). Written by hand: huggingface_hub
    fills its cache only from downloads. Returns the snapshot folder."""
    folder = Path(folder)
    repo = Path(cache_dir) / ("models--" + model_id.replace("/", "--"))
    commit = hashlib.sha1(model_id.encode()).hexdigest()  # a stable 40-hex revision
    snapshot = repo / "snapshots" / commit
    for part in include or [p.name for p in folder.iterdir()]:
        src, dst = folder / part, snapshot / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
