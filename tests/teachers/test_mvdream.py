"""MVDream teacher (ayg.teachers.mvdream): checkpoint conversion, multiview attention, camera
embedding and convention, encoder gradients. Tiny random models only; nothing is downloaded.

The synthetic checkpoints (``ayg.teachers.synthetic``) are written from an independent
enumeration of MVDream's ldm module tree (``openaimodel.MultiViewUNetModel``, ldm
``AutoencoderKL``, OpenCLIP's text tower), not from the converter's own tables.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from ayg.cameras import look_at_cameras  # noqa: E402
from ayg.distill import Conditioning, Teacher  # noqa: E402
from ayg.teachers.hub import TeacherNotAvailable  # noqa: E402
from ayg.teachers.mvdream import (  # noqa: E402
    ByteTokenizer,
    MultiViewAttnProcessor,
    MVDreamArch,
    MVDreamTeacher,
    convert_ldm_unet,
    convert_ldm_vae,
    convert_open_clip_text,
    mvdream_cameras,
)
from ayg.teachers.synthetic import (  # noqa: E402
    ldm_unet_shapes,
    ldm_vae_shapes,
    open_clip_shapes,
    synthetic_checkpoint,
    write_mvdream_port,
    write_stand_in_tokenizer,
)

TINY = MVDreamArch(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    num_head_channels=16,
    context_dim=32,
    vae_ch=32,
    vae_ch_mult=(1, 2),
    vae_num_res_blocks=1,
    text_width=32,
    text_layers=3,
    text_heads=2,
    text_vocab=300,
    image_size=16,
)


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return synthetic_checkpoint(TINY)


@pytest.fixture(scope="module")
def teacher(checkpoint) -> MVDreamTeacher:
    return MVDreamTeacher.from_state_dict(checkpoint, TINY, ByteTokenizer(TINY.text_vocab))


def cams(b: int = 1, elevation: float = 15.0, start: float = 0.0, distance: float = 2.0):
    """b samples of 4 orthogonal views (sample-major), as the stage-1 sampler makes them."""
    azim = (start + torch.arange(4 * b) % 4 * 90.0) % 360.0
    return look_at_cameras(elevation, azim, distance, 40.0, 32, 32)


def noisy_inputs(b: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(b, 4, 4, 8, 8, generator=g)  # (B, V, c, h, w)
    t = torch.randint(0, 1000, (b,), generator=g)
    return noisy, t


# ----------------------------------------------------------------------------------------------
# Camera convention


def mvdream_get_camera(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's camera_utils.get_camera for one view (restated): y-up look-at with OpenGL axes,
    then the world rotated to z-up (x, y, z) -> (x, -z, y), flattened row-major."""
    e, a = np.radians(elevation), np.radians(azimuth)
    pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    fwd = -pos / np.linalg.norm(pos)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -fwd], axis=1)
    c2w[:3, 3] = pos
    to_z_up = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    return (to_z_up @ c2w).reshape(16)


def test_front_view_is_mvdream_azimuth_90():
    """Our azimuth 0 / elevation 0 camera (on +x, looking at the origin): OpenGL axes right
    (0, 1, 0), up (0, 0, 1), back (1, 0, 0), unit position; equal to MVDream's (0°, 90°)."""
    got = mvdream_cameras(look_at_cameras(0.0, 0.0, 3.7, 40.0, 32, 32))[0].reshape(4, 4)
    expected = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    ref = torch.from_numpy(mvdream_get_camera(0.0, 90.0)).float()
    torch.testing.assert_close(got.reshape(16), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("elevation", [-10.0, 0.0, 15.0, 45.0, 80.0])
@pytest.mark.parametrize("azimuth", [0.0, 37.0, 90.0, 180.0, 270.0, 333.0])
def test_camera_conversion_matches_get_camera(elevation, azimuth):
    got = mvdream_cameras(look_at_cameras(elevation, azimuth, 2.5, 50.0, 32, 32))[0]
    ref = torch.from_numpy(mvdream_get_camera(elevation, azimuth + 90.0)).float()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_camera_conditioning_ignores_distance_and_fov():
    near = mvdream_cameras(look_at_cameras(20.0, 10.0, 1.2, 20.0, 32, 32))
    far = mvdream_cameras(look_at_cameras(20.0, 10.0, 4.0, 60.0, 64, 48))
    torch.testing.assert_close(near, far, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# Checkpoint conversion


def test_official_checkpoint_loads_and_every_tensor_lands(tmp_path, checkpoint):
    path = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(checkpoint, path)
    t = MVDreamTeacher.from_checkpoint(path, TINY, ByteTokenizer(TINY.text_vocab))

    unet, vae = t.unet.state_dict(), t.vae.state_dict()
    text = {k.removeprefix("text_model."): v for k, v in t.text_encoder.state_dict().items()}
    n_unet = sum(k.startswith("model.diffusion_model.") for k in checkpoint)
    n_vae = sum(k.startswith("first_stage_model.") for k in checkpoint)
    # every ldm tensor becomes exactly one diffusers tensor (the loads are strict)
    assert len(unet) == n_unet and len(vae) == n_vae
    # text: fused qkv -> 3 tensors each; last resblock (unused, penultimate) and text_projection,
    # logit_scale dropped
    per_layer = 12 + 4
    assert len(text) == 4 + per_layer * (TINY.text_layers - 1)

    ck = checkpoint
    p, f, c = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."
    pairs = [
        (unet["class_embedding.linear_1.weight"], ck[p + "camera_embed.0.weight"]),
        (unet["class_embedding.linear_2.bias"], ck[p + "camera_embed.2.bias"]),
        (unet["time_embedding.linear_2.weight"], ck[p + "time_embed.2.weight"]),
        (unet["conv_in.weight"], ck[p + "input_blocks.0.0.weight"]),
        (
            unet["down_blocks.0.resnets.0.conv1.weight"],
            ck[p + "input_blocks.1.0.in_layers.2.weight"],
        ),
        (
            unet["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
            ck[p + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"],
        ),
        (unet["down_blocks.0.downsamplers.0.conv.weight"], ck[p + "input_blocks.2.0.op.weight"]),
        (
            unet["down_blocks.1.resnets.0.conv_shortcut.weight"],
            ck[p + "input_blocks.3.0.skip_connection.weight"],
        ),
        (
            unet["mid_block.resnets.1.time_emb_proj.weight"],
            ck[p + "middle_block.2.emb_layers.1.weight"],
        ),
        (unet["mid_block.attentions.0.proj_out.weight"], ck[p + "middle_block.1.proj_out.weight"]),
        (unet["up_blocks.0.upsamplers.0.conv.weight"], ck[p + "output_blocks.1.2.conv.weight"]),
        (
            unet["up_blocks.1.resnets.1.norm2.weight"],
            ck[p + "output_blocks.3.0.out_layers.0.weight"],
        ),
        (unet["conv_out.weight"], ck[p + "out.2.weight"]),
        (
            vae["encoder.mid_block.attentions.0.to_q.weight"],
            ck[f + "encoder.mid.attn_1.q.weight"][:, :, 0, 0],
        ),
        (
            vae["encoder.mid_block.attentions.0.group_norm.bias"],
            ck[f + "encoder.mid.attn_1.norm.bias"],
        ),
        (
            vae["decoder.up_blocks.0.resnets.1.conv2.weight"],
            ck[f + "decoder.up.1.block.1.conv2.weight"],
        ),
        (
            vae["decoder.up_blocks.0.upsamplers.0.conv.bias"],
            ck[f + "decoder.up.1.upsample.conv.bias"],
        ),
        (
            vae["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"],
            ck[f + "decoder.up.0.block.0.nin_shortcut.weight"],
        ),
        (vae["encoder.conv_norm_out.weight"], ck[f + "encoder.norm_out.weight"]),
        (vae["quant_conv.weight"], ck[f + "quant_conv.weight"]),
        (text["embeddings.position_embedding.weight"], ck[c + "positional_embedding"]),
        (
            text["encoder.layers.1.self_attn.k_proj.weight"],
            ck[c + "transformer.resblocks.1.attn.in_proj_weight"][32:64],
        ),
        (
            text["encoder.layers.0.self_attn.v_proj.bias"],
            ck[c + "transformer.resblocks.0.attn.in_proj_bias"][64:],
        ),
        (
            text["encoder.layers.0.mlp.fc2.weight"],
            ck[c + "transformer.resblocks.0.mlp.c_proj.weight"],
        ),
        (text["final_layer_norm.bias"], ck[c + "ln_final.bias"]),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(t.alphas_cumprod(), ck["alphas_cumprod"])


def test_conversion_rejects_unknown_tensors(checkpoint):
    bad = dict(checkpoint)
    bad["model.diffusion_model.input_blocks.1.7.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="no diffusers counterpart"):
        convert_ldm_unet(bad, TINY)
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        wrong = dataclasses.replace(TINY, context_dim=64)
        MVDreamTeacher.from_state_dict(checkpoint, wrong, ByteTokenizer(TINY.text_vocab))


def test_conversion_agrees_with_diffusers_single_file_converter(checkpoint):
    """An independent ldm->diffusers mapping: diffusers' own single-file converters."""
    sf = pytest.importorskip("diffusers.loaders.single_file_utils")
    if not hasattr(sf, "convert_ldm_unet_checkpoint") or not hasattr(
        sf, "convert_ldm_vae_checkpoint"
    ):
        pytest.skip("diffusers has no single-file converters")
    ours = convert_ldm_unet(checkpoint, TINY)
    theirs = sf.convert_ldm_unet_checkpoint(checkpoint, {"layers_per_block": TINY.num_res_blocks})
    assert set(ours) - set(theirs) == {k for k in ours if k.startswith("class_embedding.")}
    for k, v in theirs.items():
        assert ours[k] is v or torch.equal(ours[k], v), k
    ours = convert_ldm_vae(checkpoint, TINY)
    theirs = sf.convert_ldm_vae_checkpoint(checkpoint, TINY.vae_config())
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k


def meta_checkpoint(arch: MVDreamArch) -> dict[str, torch.Tensor]:
    """The official layout's keys with meta tensors of the right shapes (no memory)."""
    meta = {}
    for prefix, shapes in (
        ("model.diffusion_model.", ldm_unet_shapes(arch)),
        ("first_stage_model.", ldm_vae_shapes(arch)),
        ("cond_stage_model.model.", open_clip_shapes(arch)),
    ):
        meta.update({prefix + k: torch.empty(s, device="meta") for k, s in shapes.items()})
    return meta


# shapes a checkpoint stores, all unlike MVDream's; 64-channel heads as MVDream's (not stored)
ODD = MVDreamArch(
    model_channels=64,
    channel_mult=(1, 2, 3),
    num_res_blocks=2,
    attention_resolutions=(2,),
    transformer_depth=2,
    context_dim=48,
    camera_dim=12,
    latent_channels=3,
    vae_ch=32,
    vae_ch_mult=(1, 3),
    vae_num_res_blocks=3,
    text_width=128,
    text_layers=3,
    text_heads=2,
    text_vocab=97,
    text_context=20,
)


def test_arch_is_read_off_the_checkpoint_shapes():
    assert MVDreamArch.from_checkpoint_shapes(meta_checkpoint(MVDreamArch())) == MVDreamArch()
    assert MVDreamArch.from_checkpoint_shapes(meta_checkpoint(ODD)) == ODD
    with pytest.raises(ValueError, match="not an MVDream checkpoint.*conv_in") as err:
        MVDreamArch.from_checkpoint_shapes(
            {k: v for k, v in meta_checkpoint(ODD).items() if "encoder.conv_in" not in k}
        )
    assert "\n" not in str(err.value)


def test_official_checkpoint_of_another_size_loads_without_an_arch(tmp_path):
    path = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(synthetic_checkpoint(ODD), path)
    t = MVDreamTeacher.from_pretrained(str(path), tokenizer=ByteTokenizer(ODD.text_vocab))
    assert list(t.unet.config.block_out_channels) == [64, 128, 192]
    assert t.text_encoder.config.num_hidden_layers == ODD.text_layers - 1
    with pytest.raises(ValueError, match="not an MVDream checkpoint"):
        MVDreamTeacher.from_state_dict({"state": torch.zeros(1)}, tokenizer=ByteTokenizer(9))


def test_real_size_conversion_fills_the_diffusers_modules():
    """At MVDream's real size (meta tensors: no memory), the converted key names and shapes are
    exactly those of the diffusers modules built from MVDreamArch()."""
    from transformers import CLIPTextModel

    arch = MVDreamArch()
    meta = meta_checkpoint(arch)
    n_unet = sum(k.startswith("model.diffusion_model.") for k in meta)
    assert n_unet == 686 + 4  # SD 2.1's UNet + the camera MLP
    with torch.device("meta"):
        modules = {
            "unet": (UNet2DConditionModel(**arch.unet_config()), convert_ldm_unet(meta, arch)),
            "vae": (AutoencoderKL(**arch.vae_config()), convert_ldm_vae(meta, arch)),
            "text": (CLIPTextModel(arch.text_config()), convert_open_clip_text(meta, arch)),
        }
    for name, (module, converted) in modules.items():
        want = {
            k.removeprefix("text_model."): tuple(v.shape) for k, v in module.state_dict().items()
        }
        got = {k: tuple(v.shape) for k, v in converted.items()}
        assert got == want, name
    assert modules["text"][0].config.num_hidden_layers == 23  # OpenCLIP's penultimate layer


def test_text_embeddings_match_open_clip_penultimate_layer(teacher, checkpoint):
    """Reference: OpenCLIP's text tower (nn.MultiheadAttention blocks, causal mask) run to its
    penultimate block, then ln_final, as MVDream's FrozenOpenCLIPEmbedder does."""
    c, w = "cond_stage_model.model.", TINY.text_width
    ids = ByteTokenizer(TINY.text_vocab)(["a red ball"]).input_ids  # (1, 77)
    x = checkpoint[c + "token_embedding.weight"][ids] + checkpoint[c + "positional_embedding"]
    mask = torch.full((77, 77), float("-inf")).triu(1)
    for n in range(TINY.text_layers - 1):
        p = f"{c}transformer.resblocks.{n}."
        mha = torch.nn.MultiheadAttention(w, TINY.text_heads, batch_first=True)
        mha.load_state_dict(
            {
                "in_proj_weight": checkpoint[p + "attn.in_proj_weight"],
                "in_proj_bias": checkpoint[p + "attn.in_proj_bias"],
                "out_proj.weight": checkpoint[p + "attn.out_proj.weight"],
                "out_proj.bias": checkpoint[p + "attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (w,), checkpoint[p + "ln_1.weight"], checkpoint[p + "ln_1.bias"])
        x = x + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = F.layer_norm(x, (w,), checkpoint[p + "ln_2.weight"], checkpoint[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, checkpoint[p + "mlp.c_fc.weight"], checkpoint[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, checkpoint[p + "mlp.c_proj.weight"], checkpoint[p + "mlp.c_proj.bias"])
    ref = F.layer_norm(x, (w,), checkpoint[c + "ln_final.weight"], checkpoint[c + "ln_final.bias"])
    torch.testing.assert_close(teacher.embed(["a red ball"]), ref, atol=1e-5, rtol=1e-4)


def test_diffusers_port_layout(tmp_path, checkpoint):
    """A diffusers-format port with MVDream's own UNet layout (ldm-style unet/config.json, ldm
    tensor names), written by ``write_mvdream_port`` with a stand-in CLIP tokenizer."""
    from safetensors import safe_open
    from transformers import CLIPTextModel

    tokenizer = write_stand_in_tokenizer(tmp_path / "tok")
    src = MVDreamTeacher.from_state_dict(checkpoint, TINY, tokenizer)
    port = write_mvdream_port(tmp_path / "port", checkpoint, TINY, tokenizer)
    config = json.loads((port / "unet" / "config.json").read_text())
    assert config["model_channels"] == TINY.model_channels and "block_out_channels" not in config
    with safe_open(str(port / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert "input_blocks.0.0.weight" in f.keys() and "camera_embed.0.weight" in f.keys()
    t = MVDreamTeacher.from_pretrained(str(port))  # tokenizer from the port's tokenizer/
    for k, v in src.unet.state_dict().items():
        torch.testing.assert_close(t.unet.state_dict()[k], v, atol=0, rtol=0)
    assert isinstance(t.text_encoder, CLIPTextModel)
    torch.testing.assert_close(t.embed(["a cat"]), src.embed(["a cat"]))
    torch.testing.assert_close(t.alphas_cumprod(), src.alphas_cumprod())
    assert t.image_size == 256  # MVDream's resolution unless told otherwise


def test_diffusers_port_with_separate_camera_projection(tmp_path, teacher):
    """A diffusers-layout UNet without class embedding plus a ``camera_proj/`` MLP (linear_1,
    linear_2), as in the mvdream-diffusers port."""
    from safetensors.torch import save_file

    weights = teacher.unet.state_dict()
    cfg = {
        **TINY.unet_config(),
        "class_embed_type": None,
        "projection_class_embeddings_input_dim": None,
    }
    sd_unet = UNet2DConditionModel(**cfg)
    sd_unet.load_state_dict(
        {k: v for k, v in weights.items() if not k.startswith("class_embedding.")}
    )
    sd_unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "camera_proj").mkdir()
    camera = {
        k.removeprefix("class_embedding."): v.contiguous()
        for k, v in weights.items()
        if k.startswith("class_embedding.")
    }
    save_file(camera, str(tmp_path / "camera_proj" / "diffusion_pytorch_model.safetensors"))
    teacher.vae.save_pretrained(tmp_path / "vae")
    teacher.text_encoder.save_pretrained(tmp_path / "text_encoder")
    t = MVDreamTeacher.from_pretrained(str(tmp_path), tokenizer=ByteTokenizer(TINY.text_vocab))
    noisy, tt, emb, cond = _unet_inputs(teacher)
    with torch.no_grad():
        torch.testing.assert_close(
            t.predict_noise(noisy, tt, emb, cond), teacher.predict_noise(noisy, tt, emb, cond)
        )


def test_official_checkpoint_without_the_tokenizer_cached_is_one_clear_line(tmp_path, checkpoint):
    path = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(checkpoint, path)
    with pytest.raises(TeacherNotAvailable) as err:
        MVDreamTeacher.from_pretrained(str(path), local_files_only=True, cache_dir=tmp_path / "hub")
    msg = str(err.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "tokenizer" in msg
    assert "hf download" in msg and "\n" not in msg


def test_missing_model_offline_is_one_clear_line(tmp_path):
    with pytest.raises(TeacherNotAvailable) as err:
        MVDreamTeacher.from_pretrained("MVDream/MVDream", local_files_only=True, cache_dir=tmp_path)
    msg = str(err.value)
    assert "MVDream/MVDream" in msg and "sd-v2.1-base-4view.pt" in msg and "hf download" in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------------------------
# UNet behaviour


def _unet_inputs(teacher, b=1, seed=0):
    noisy, t = noisy_inputs(b, seed)
    emb = teacher.embed(["a cat"] * b)
    return noisy, t, emb, Conditioning(cameras=cams(b))


def test_without_cross_view_it_is_the_plain_diffusers_unet(teacher):
    noisy, t, emb, cond = _unet_inputs(teacher, b=2)
    x = noisy.reshape(8, 4, 8, 8)
    tt, ctx = t.repeat_interleave(4), emb.repeat_interleave(4, dim=0)
    camera = mvdream_cameras(cond.cameras)  # (8, 16)

    plain = UNet2DConditionModel(**TINY.unet_config())  # default attention processors
    plain.load_state_dict(teacher.unet.state_dict())
    teacher.cross_view = False
    try:
        ours = teacher.predict_noise(noisy, t, emb, cond).reshape(8, 4, 8, 8)
    finally:
        teacher.cross_view = True
    with torch.no_grad():
        ref = plain(x, tt, encoder_hidden_states=ctx, class_labels=camera).sample
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    # the camera MLP is an additive term on the timestep embedding: zero its output layer and
    # the model is SD's UNet (no class embedding at all) with the same weights
    sd_cfg = {
        **TINY.unet_config(),
        "class_embed_type": None,
        "projection_class_embeddings_input_dim": None,
    }
    sd_unet = UNet2DConditionModel(**sd_cfg)
    weights = {
        k: v for k, v in teacher.unet.state_dict().items() if not k.startswith("class_embedding.")
    }
    sd_unet.load_state_dict(weights, strict=True)
    zeroed = UNet2DConditionModel(**TINY.unet_config())
    zeroed.load_state_dict(teacher.unet.state_dict())
    with torch.no_grad():
        zeroed.class_embedding.linear_2.weight.zero_()
        zeroed.class_embedding.linear_2.bias.zero_()
        a = zeroed(x, tt, encoder_hidden_states=ctx, class_labels=camera).sample
        b = sd_unet(x, tt, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cross_view_attention_couples_the_views(teacher):
    noisy, t, emb, cond = _unet_inputs(teacher, b=2)
    other = noisy.clone()
    other[0, 2] += torch.randn_like(other[0, 2])  # perturb view 2 of sample 0

    with torch.no_grad():
        on = teacher.predict_noise(noisy, t, emb, cond), teacher.predict_noise(other, t, emb, cond)
        teacher.cross_view = False
        try:
            off = (
                teacher.predict_noise(noisy, t, emb, cond),
                teacher.predict_noise(other, t, emb, cond),
            )
        finally:
            teacher.cross_view = True
    assert (on[0][0, 0] - on[1][0, 0]).abs().max() > 1e-4  # view 0 sees view 2
    # per view, it doesn't
    torch.testing.assert_close(off[0][0, 0], off[1][0, 0], atol=1e-6, rtol=0)
    # samples stay independent either way
    torch.testing.assert_close(on[0][1], on[1][1], atol=1e-6, rtol=0)
    assert (on[0] - off[0]).abs().max() > 1e-4


def test_multiview_processor_is_attention_over_all_views():
    """Reference: softmax(q kᵀ/√d) v over the V·L tokens of a sample, written out by hand."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16)
    b, v, n, c = 2, 4, 5, 32
    x = torch.randn(b * v, n, c)  # (B·V, L, C)
    out = MultiViewAttnProcessor(num_views=v)(attn, x)

    joint = x.reshape(b, v * n, c)
    q, k, val = (
        lin(joint).reshape(b, v * n, 2, 16).transpose(1, 2)
        for lin in (attn.to_q, attn.to_k, attn.to_v)
    )  # (B, heads, V·L, d)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1)
    ref = attn.to_out[0]((w @ val).transpose(1, 2).reshape(b, v * n, c)).reshape(b * v, n, c)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_camera_embedding_changes_the_output(teacher):
    noisy, t, emb, cond = _unet_inputs(teacher)
    with torch.no_grad():
        a = teacher.predict_noise(noisy, t, emb, cond)
        b = teacher.predict_noise(noisy, t, emb, Conditioning(cameras=cams(start=45.0)))
        c = teacher.predict_noise(noisy, t, emb, Conditioning(cameras=cams(elevation=40.0)))
        same = teacher.predict_noise(noisy, t, emb, Conditioning(cameras=cams(distance=3.0)))
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4
    torch.testing.assert_close(a, same)  # only the direction is conditioned on


def test_protocol_shapes_and_batched_branches(teacher):
    assert isinstance(teacher, Teacher)
    assert teacher.kind == "multiview" and teacher.frames == 4
    a = teacher.alphas_cumprod()
    assert a.shape == (1000,) and a.dtype == torch.float32 and bool((a[1:] < a[:-1]).all())

    emb = teacher.embed(["a cat", "", "ugly"])
    assert emb.shape == (3, 77, TINY.text_width)
    calls = teacher.prompts.encoder_calls
    teacher.embed(["", "a cat"])
    assert teacher.prompts.encoder_calls == calls  # cached per prompt

    noisy, t = noisy_inputs(1)
    cond = Conditioning(cameras=cams(1))
    with torch.no_grad():
        single = teacher.predict_noise(noisy, t, emb[:1], cond)
        # three CFG branches stacked branch-major, one call
        stacked = teacher.predict_noise(
            noisy.repeat(3, 1, 1, 1, 1), t.repeat(3), emb, cond.repeat(3)
        )
    assert single.shape == (1, 4, 4, 8, 8) and single.dtype == torch.float32
    assert stacked.shape == (3, 4, 4, 8, 8)
    torch.testing.assert_close(stacked[:1], single, atol=1e-5, rtol=1e-5)
    assert (stacked[0] - stacked[1]).abs().max() > 1e-4  # the text matters

    with pytest.raises(ValueError, match="cameras"):
        teacher.predict_noise(noisy, t, emb[:1])
    with pytest.raises(ValueError, match="cameras"):
        teacher.predict_noise(noisy, t, emb[:1], Conditioning(cameras=cams(2)))


def test_gradient_flows_from_the_score_through_the_encoder_to_the_images(teacher):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 4, 3, 16, 16, generator=g, requires_grad=True)  # (B, V, 3, H, W)
    latents = teacher.encode(images, generator=g)
    assert latents.shape == (1, 4, 4, 8, 8)
    with torch.no_grad():  # the score is a constant direction (SDS/CSD)
        eps = teacher.predict_noise(
            latents, torch.tensor([400]), teacher.embed(["a cat"]), Conditioning(cams())
        )
    (latents * eps).sum().backward()
    per_view = images.grad.abs().flatten(2).sum(-1)  # (1, 4)
    assert bool((per_view > 0).all())

    images.grad = None
    latents = teacher.encode(images, grad_frames=1, generator=g)
    (latents * eps).sum().backward()
    assert int((images.grad.abs().flatten(2).sum(-1) > 0).sum()) == 1


def test_encode_resizes_renders_to_the_model_size(teacher):
    big = torch.rand(1, 4, 3, 40, 40)  # renders of another size are resized to image_size
    assert teacher.encode(big, generator=torch.Generator().manual_seed(0)).shape == (1, 4, 4, 8, 8)


def test_offload_and_activate(teacher):
    teacher.offload()
    assert not teacher.active
    noisy, t, emb, cond = _unet_inputs(teacher)  # embed re-activates
    assert teacher.active
    teacher.offload()
    with torch.no_grad():
        assert teacher.predict_noise(noisy, t, emb, cond).shape == (1, 4, 4, 8, 8)
    assert teacher.active and next(teacher.unet.parameters()).device == teacher.device


def test_from_config_random_weights_are_seeded():
    a = MVDreamTeacher.from_config(TINY, seed=3)
    b = MVDreamTeacher.from_config(TINY, seed=3)
    for (k, v), w in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert a.image_size == TINY.image_size
