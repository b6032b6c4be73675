"""Offline-first loading of teacher weights from the Hugging Face cache.

Every real teacher (Stable Diffusion, MVDream, the video model) is loaded the same way:

* from the user's Hugging Face cache, or a local directory given in place of a model id;
* without touching the network when ``local_files_only`` is set or ``HF_HUB_OFFLINE=1``;
* without executing pickled code: diffusers and transformers prefer ``*.safetensors`` and fall
  back to ``torch.load(weights_only=True)``; ``safe_torch_load`` does the same for single
  checkpoints (MVDream's official ``.ckpt``/``.pt`` files);
* when a model is missing, with one clear line naming the id and how to fetch it
  (:class:`TeacherNotAvailable`) instead of a stack of hub errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}


class TeacherNotAvailable(RuntimeError):
    """A teacher's weights are not in the local cache (or could not be fetched)."""


def offline_mode(local_files_only: bool | None = None) -> bool:
    """``local_files_only`` when given, else whether ``HF_HUB_OFFLINE`` is set (read now, not at
    import, so that tests and users can flip it at run time)."""
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def fetch_hint(model_id: str) -> str:
    """How to put ``model_id`` into the cache while online."""
    return f"fetch it once while online with `hf download {model_id}` (or `huggingface-cli download {model_id}`)"


def not_available(
    model_id: str, what: str = "", cause: BaseException | None = None
) -> TeacherNotAvailable:
    """The one-line error for a missing model; ``what`` names the component (``unet``, ...)."""
    part = f" ({what})" if what else ""
    reason = f": {type(cause).__name__}" if cause is not None else ""
    return TeacherNotAvailable(
        f"teacher model {model_id!r}{part} is not available in the Hugging Face cache{reason}; "
        + fetch_hint(model_id)
    )


def load_component(
    loader: Callable[..., T],
    model_id: str,
    subfolder: str | None = None,
    *,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> T:
    """``loader(model_id, subfolder=..., local_files_only=..., cache_dir=..., **kwargs)`` where
    ``loader`` is a ``from_pretrained`` (diffusers model, transformers model or tokenizer, or a
    scheduler). Missing files become :class:`TeacherNotAvailable`; other errors pass through.
    """
    extra: dict[str, Any] = dict(kwargs)
    if subfolder:
        extra["subfolder"] = subfolder
    if cache_dir is not None:
        extra["cache_dir"] = str(cache_dir)
    if revision is not None:
        extra["revision"] = revision
    try:
        return loader(model_id, local_files_only=offline_mode(local_files_only), **extra)
    except (OSError, _entry_not_found_error()) as e:  # hub errors, missing files, offline mode
        raise not_available(model_id, subfolder or "", e) from e


def hub_file(
    model_id: str,
    filename: str,
    *,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> Path:
    """Local path of one file of a model repository (a local directory works too), downloaded
    only when online. Missing -> :class:`TeacherNotAvailable`."""
    local = Path(model_id)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise TeacherNotAvailable(
                f"teacher model directory {model_id!r} has no file {filename!r}"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                model_id,
                filename,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                local_files_only=offline_mode(local_files_only),
            )
        )
    except (OSError, _entry_not_found_error()) as e:
        raise not_available(model_id, filename, e) from e


def pipeline_index(
    model_id: str,
    *,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The ``model_index.json`` of a diffusers pipeline repository (or local folder): its
    ``_class_name`` and, per component folder, ``[library, class name]``."""
    import json

    path = hub_file(
        model_id,
        "model_index.json",
        local_files_only=local_files_only,
        cache_dir=cache_dir,
        revision=revision,
    )
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TeacherNotAvailable(
            f"teacher model {model_id!r} has an unreadable model_index.json ({type(e).__name__})"
        ) from e
    if not isinstance(index, dict):
        raise TeacherNotAvailable(f"teacher model {model_id!r}: model_index.json is not a mapping")
    return index


def safe_torch_load(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint loaded with
    ``weights_only=True`` (no pickled code runs). A ``state_dict`` wrapper key is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TeacherNotAvailable(
            f"checkpoint {str(path)!r} holds {type(obj).__name__}, not a state dict"
        )
    return obj


def _entry_not_found_error() -> type[BaseException]:
    # EntryNotFoundError is not an OSError in every huggingface_hub version.
    try:
        from huggingface_hub.errors import EntryNotFoundError

        return EntryNotFoundError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return OSError
