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
from typing import Any

import torch
from torch import Tensor, nn

from ayg.config import VIDEO_NEGATIVE_PROMPT
from ayg.distill import Conditioning, Posterior
from ayg.teachers.stable_diffusion import LatentTeacher, eps_from_prediction

DEFAULT_MODEL_ID = "cerspense/zeroscope_v2_576w"
MODELSCOPE_MODEL_ID = "ali-vilab/text-to-video-ms-1.7b"
FRAMES = 16


def takes_fps(unet: nn.Module) -> bool:
    """Whether the UNet's forward has an ``fps`` input (the paper's model would; Zeroscope not)."""
    return "fps" in inspect.signature(unet.forward).parameters


class VideoTeacher(LatentTeacher):
    """Video teacher (F = 16) implementing ``ayg.distill.Teacher`` on a diffusers
    ``UNet3DConditionModel`` (Zeroscope, ModelScope)."""

    kind = "video"
    negative_prompt = VIDEO_NEGATIVE_PROMPT  # stage 2's default (the paper's, eq. 23)
    unet_class = "UNet3DConditionModel"
    default_model_id = DEFAULT_MODEL_ID

    def __init__(self, unet: nn.Module, *args: Any, frames: int = FRAMES, **kwargs: Any) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        super().__init__(unet, *args, **kwargs)
        self.frames = frames
        self.fps_input = takes_fps(unet)

    def encode(
        self,
        images: Tensor,
        grad_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """frames (B, F, 3, H, W) in [0, 1] -> latents (B, F, 4, H'/8, W'/8), frame by frame;
        with ``grad_frames = k`` only k random frames per clip carry gradient."""
        self._ensure_active()
        self._check_clips(images)
        images = images.to(self.device)

        return self._encode_clips(images, grad_frames, generator)

    def encode_posterior(self, images: Tensor) -> Posterior:
        """frames (B, F, 3, H, W) in [0, 1] -> their posterior, (B, F, 4, H'/8, W'/8) each."""
        self._check_clips(images)
        return super().encode_posterior(images)

    def _check_clips(self, images: Tensor) -> None:
        if images.ndim != 5 or images.shape[1] != self.frames:
            raise ValueError(
                f"video teacher expects (B, {self.frames}, 3, H, W), got {tuple(images.shape)}"
            )

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
