"""The video teacher: a text-to-video latent DM on diffusers' ``UNet3DConditionModel``
(AYG sec. 3.2, C.7-C.8, E.1).

The paper's fps-conditioned VideoLDM is not public; the default stand-in is
``cerspense/zeroscope_v2_576w`` (trained at 320×576, close to the paper's 320×512), and
``ali-vilab/text-to-video-ms-1.7b`` loads the same way. Both share the SD autoencoder and an
OpenCLIP-H text encoder; the model's ``UNet3DConditionModel`` is loaded on its own, without
diffusers' (deprecated) text-to-video pipeline. Frames of a clip (B, F=16, 3, H, W) are resized
to 320×512 (C.8), encoded by the VAE frame by frame, and denoised jointly by the 3D UNet, whose
input is laid out (B, c, F, h, w). When the UNet's ``forward`` takes an ``fps`` argument it gets ``cond.fps``;
Zeroscope and ModelScope do not, and then fps only sets the time span of the clip upstream
(C.3). ``grad_frames=k`` backpropagates through the encoder for k random frames of each clip
only, which bounds the encoder's activation memory.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ayg.config import VIDEO_NEGATIVE_PROMPT
from ayg.distill import Conditioning
from ayg.teachers.stable_diffusion import (
    RESOLUTION,
    PromptCache,
    check_encoder_backward,
    default_dtype,
    encode_frames,
    encode_sequences,
    eps_from_prediction,
    freeze,
    load_latent_components,
)

DEFAULT_MODEL_ID = "cerspense/zeroscope_v2_576w"
MODELSCOPE_MODEL_ID = "ali-vilab/text-to-video-ms-1.7b"
FRAMES = 16


def takes_fps(unet: nn.Module) -> bool:
    """Whether the UNet's forward has an ``fps`` input (the paper's model would; Zeroscope not)."""
    return "fps" in inspect.signature(unet.forward).parameters


class VideoTeacher:
    """Video teacher (F = 16) implementing ``ayg.distill.Teacher``."""

    kind = "video"
    negative_prompt = VIDEO_NEGATIVE_PROMPT  # stage 2's default (the paper's, eq. 23)

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
        resolution: tuple[int, int] = RESOLUTION,
        frames: int = FRAMES,
        sample_latents: bool = True,
        encode_chunk: int | None = 16,
        encoder_backward: str = "keep",
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}"
            )
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if alphas_cumprod.ndim != 1:
            raise ValueError(
                f"alphas_cumprod must have shape (T,), got {tuple(alphas_cumprod.shape)}"
            )
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.vae_dtype = vae_dtype or self.dtype
        self.unet = freeze(unet, self.device, self.dtype)
        self.vae = freeze(vae, self.device, self.vae_dtype)
        self.text_encoder = freeze(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer
        self.prompts = PromptCache(tokenizer, self.text_encoder)
        self._alphas = alphas_cumprod.detach().float().to(self.device)
        self.prediction_type = prediction_type
        self.resolution = tuple(resolution)
        self.frames = frames
        self.sample_latents = sample_latents
        self.encode_chunk = encode_chunk
        self.encoder_backward = check_encoder_backward(encoder_backward)
        self.text_encoder_released = False
        self.fps_input = takes_fps(unet)
        self.active = True

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls, unet, vae, text_encoder, tokenizer, alphas_cumprod, **kwargs
    ) -> VideoTeacher:
        """From already built modules (tests, custom checkpoints)."""
        return cls(unet, vae, text_encoder, tokenizer, torch.as_tensor(alphas_cumprod), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        variant: str | None = None,
        vae_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> VideoTeacher:
        """Load a diffusers text-to-video repository (Zeroscope, ModelScope) from the Hugging
        Face cache; raises ``TeacherNotAvailable`` when offline and the model is missing."""
        from diffusers import UNet3DConditionModel

        dtype = dtype or default_dtype(device)
        parts = load_latent_components(
            model_id,
            UNet3DConditionModel,
            dtype=dtype,
            vae_dtype=vae_dtype or dtype,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            revision=revision,
            variant=variant,
        )
        return cls(device=device, dtype=dtype, vae_dtype=vae_dtype, **parts, **kwargs)

    # -- protocol -------------------------------------------------------------------------------

    def alphas_cumprod(self) -> Tensor:
        return self._alphas

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """(P, L, D) CLIP embeddings, cached per prompt."""
        self._ensure_active()
        return self.prompts(prompts, self.device)

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """frames (B, F, 3, H, W) in [0, 1] -> latents (B, F, 4, H'/8, W'/8), frame by frame;
        with ``grad_frames = k`` only k random frames per clip carry gradient."""
        self._ensure_active()
        if images.ndim != 5 or images.shape[1] != self.frames:
            raise ValueError(
                f"video teacher expects (B, {self.frames}, 3, H, W), got {tuple(images.shape)}"
            )
        images = images.to(self.device)

        def encode(x: Tensor) -> Tensor:
            return encode_frames(
                self.vae,
                x,
                self.resolution,
                generator,
                self.sample_latents,
                self.encoder_backward,
                self.encode_chunk,
            )

        return encode_sequences(encode, images, grad_frames, generator, self.encode_chunk)

    def predict_noise(
        self, noisy: Tensor, t: Tensor, emb: Tensor, cond: Conditioning | None = None
    ) -> Tensor:
        """noisy (B', F, c, h, w), t (B',), emb (B', L, D) -> ε̂ (B', F, c, h, w) float32.
        ``cond.fps`` (B',) is passed on when the UNet takes fps."""
        self._ensure_active()
        if noisy.ndim != 5:
            raise ValueError(f"noisy must have shape (B, F, c, h, w), got {tuple(noisy.shape)}")
        b = noisy.shape[0]
        if t.shape != (b,) or emb.shape[0] != b:
            raise ValueError(
                f"t must be ({b},) and emb ({b}, L, D), got {tuple(t.shape)} and {tuple(emb.shape)}"
            )
        x = noisy.to(self.device).float()
        kwargs: dict[str, Any] = {}
        if self.fps_input:
            if cond is None or cond.fps is None:
                raise ValueError("this video UNet is fps-conditioned: pass Conditioning(fps=...)")
            kwargs["fps"] = cond.fps.to(self.device)
        tt = t.to(self.device)
        sample = x.permute(0, 2, 1, 3, 4).to(self.dtype)  # (B', c, F, h, w)
        ee = emb.to(device=self.device, dtype=self.dtype)
        pred = self.unet(sample, tt, encoder_hidden_states=ee, **kwargs).sample
        pred = pred.permute(0, 2, 1, 3, 4).float()  # (B', F, c, h, w)
        a_t = self._alphas[tt].view(-1, 1, 1, 1, 1)
        return eps_from_prediction(pred, x, a_t, self.prediction_type)

    def offload(self) -> None:
        """UNet and text encoder to the CPU while another teacher runs. The VAE (small) stays:
        the graph of an ``encode`` whose loss has not been backpropagated yet holds its weights,
        and moving them would break that backward. The prompt cache stays too."""
        for m in (self.unet, self.text_encoder):
            m.to("cpu")
        self.active = False

    def activate(self) -> None:
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not self.text_encoder or not self.text_encoder_released:
                m.to(self.device)
        self.active = True

    def release_text_encoder(self) -> None:
        """Text encoder to the CPU for good, once the prompts a run needs are cached: its
        weights (~0.7 GB for OpenCLIP-H in bf16) leave the GPU; a prompt not cached yet is still
        embedded, on the CPU."""
        self.text_encoder.to("cpu")
        self.text_encoder_released = True

    def _ensure_active(self) -> None:
        if not self.active:
            self.activate()
