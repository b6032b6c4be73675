"""How a latent teacher runs on the GPU: the same maths as plain eager PyTorch, less time and
memory (the speed levers of a distillation step, AYG sec. 3.2 and E.2).

* the VAE encoder's backward (``encoder_backward``, :data:`ENCODER_BACKWARDS`): every frame
  keeps its gradient; what changes is which activations are stored and which are recomputed;
* channels-last weights and inputs for the UNet and the VAE (cuDNN's convolutions on Hopper are
  NHWC; NCHW tensors are transposed around every convolution);
* CUDA graphs of the UNet's no-grad forward (:class:`FastUNet`): one graph per input shape,
  captured on the first call and replayed after, so the few thousand kernels of a forward are
  launched by one call instead of by Python;
* optionally ``torch.compile`` of that forward (a one-time cost per shape and process, kept in
  a compile cache on disk that later runs read: :func:`use_compile_cache`);
* ``torch.backends.cudnn.benchmark`` (each convolution shape picks its fastest kernel once) and
  TF32 for float32 matrix products (the deformation field's MLP over N Gaussians × 64 times;
  the teachers themselves run in bf16). Both are process-wide switches.

:func:`configure_teacher` applies a choice of these to a built teacher and can be called again
with another choice (the benchmark compares them on the same weights).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ayg.teachers.stable_diffusion import ENCODER_BACKWARDS, check_encoder_backward

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Runtime:
    """One choice of the levers above; the run's values come from ``config.TeacherConfig``."""

    encoder_backward: str = "keep"
    encoder_chunk: int | None = 16
    channels_last: bool = False
    encoder_channels_last: bool = False  # the VAE alone channels-last (its encoder NHWC)
    cuda_graphs: bool = False
    compile: str = "none"
    compile_cache: str | None = None  # None: TORCHINDUCTOR_CACHE_DIR, else the user cache
    cudnn_benchmark: bool = False
    tf32: bool = False

    def __post_init__(self) -> None:
        check_encoder_backward(self.encoder_backward)
        if self.compile not in COMPILE_MODES:
            raise ValueError(
                f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"
            )
        if self.encoder_chunk is not None and self.encoder_chunk < 1:
            raise ValueError(f"encoder_chunk must be >= 1 or None, got {self.encoder_chunk}")


NAIVE = Runtime()  # plain eager PyTorch: what every lever is measured against


class _Graph:
    """One captured forward: static inputs, the graph, its static output."""

    def __init__(self, fn: Callable[..., Tensor], args: tuple[Tensor, ...], kwargs: dict) -> None:
        self.args = tuple(a.clone() for a in args)
        self.kwargs = {k: v.clone() for k, v in kwargs.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capturing stream (cuDNN autotuning)
            for _ in range(2):
                fn(*self.args, **self.kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(*self.args, **self.kwargs)

    def __call__(self, args: tuple[Tensor, ...], kwargs: dict) -> Tensor:
        for static, a in zip(self.args, args, strict=True):
            static.copy_(a)
        for k, v in kwargs.items():
            self.kwargs[k].copy_(v)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites the static output


def _signature(args: tuple[Tensor, ...], kwargs: dict[str, Tensor]) -> tuple:
    parts = [(t.shape, t.dtype, t.device, t.stride()) for t in args]
    parts += [(k, v.shape, v.dtype, v.device, v.stride()) for k, v in sorted(kwargs.items())]
    return tuple(parts)


class FastUNet(nn.Module):
    """A frozen diffusers UNet whose no-grad forward is replayed from CUDA graphs and/or run
    through ``torch.compile``; with gradients enabled, on the CPU, or with both off it is the
    plain UNet. Called like the UNet (``sample, timestep, encoder_hidden_states=...``, other
    conditioning as tensor keywords); returns an object with ``.sample``.

    ``key`` adds host-side state a forward depends on to the graph key (MVDream's number of
    views). Moving the module (``.to``) drops the graphs: they hold the weights' addresses.
    """

    def __init__(
        self,
        unet: nn.Module,
        cuda_graphs: bool = True,
        compile: str = "none",
        key: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self.inner = unet
        self.cuda_graphs = cuda_graphs
        self.compile_mode = compile
        self.key = key
        self.graphs: dict[tuple, _Graph] = {}
        self._fn = self._plain
        if compile != "none":
            module = compiled(unet, compile)
            self._fn = lambda sample, timestep, **kw: module(
                sample, timestep, return_dict=False, **kw
            )[0]

    @property
    def config(self) -> Any:
        return self.inner.config

    def _plain(self, sample: Tensor, timestep: Tensor, **kwargs: Tensor) -> Tensor:
        return self.inner(sample, timestep, return_dict=False, **kwargs)[0]

    def forward(self, sample: Tensor, timestep: Tensor, **kwargs: Tensor) -> SimpleNamespace:
        if not sample.is_cuda:
            return SimpleNamespace(sample=self._plain(sample, timestep, **kwargs))
        use_graph = self.cuda_graphs and not torch.is_grad_enabled()
        if not use_graph:
            return SimpleNamespace(sample=self._fn(sample, timestep, **kwargs))
        args = (sample, timestep)
        sig = (_signature(args, kwargs), None if self.key is None else self.key())
        graph = self.graphs.get(sig)
        if graph is None:
            graph = self.graphs[sig] = _Graph(self._fn, args, kwargs)
        return SimpleNamespace(sample=graph(args, kwargs))

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Plain eager forwards inside the block (FLOP counting, debugging)."""
        saved = self.cuda_graphs, self._fn
        self.cuda_graphs, self._fn = False, self._plain
        try:
            yield
        finally:
            self.cuda_graphs, self._fn = saved

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half(): the graphs go stale
        self.graphs.clear()
        return super()._apply(fn, recurse)


def compiled(unet: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(unet, mode=mode)``, once per UNet and mode in a process: every
    :class:`FastUNet` around the same UNet calls the same compiled module, so wrapping it again
    (each stage loop configures its teachers) does not trace and compile it again. Kept in a
    plain attribute of the UNet (a dict, not a submodule: the state dict does not change)."""
    cache = unet.__dict__.setdefault("_ayg_compiled", {})
    if mode not in cache:
        _allow_recompiles(RECOMPILE_LIMIT)
        cache[mode] = torch.compile(unet, mode=mode, dynamic=False, fullgraph=False)
    return cache[mode]


#: Compiled graphs torch keeps per UNet class's forward before it runs that forward eagerly. Each
#: input shape is one (``dynamic=False``), and one process of the paper pipeline meets
#: ``UNet2DConditionModel`` at several: SD's UNet in stage 1, stage 2 and both fine-tunings and
#: MVDream's (the same class) in stage 1 and the 3D fine-tuning; torch's default of 8 would
#: leave little room.
RECOMPILE_LIMIT = 64


def _allow_recompiles(n: int) -> None:
    import torch._dynamo.config as dynamo

    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, name, max(getattr(dynamo, name), n))


def default_compile_cache() -> str:
    """Where compiled UNets are kept between runs: ``$XDG_CACHE_HOME/ayg/torch-compile``, else
    ``~/.cache/ayg/torch-compile`` (the rule the Hugging Face cache holding the weights follows;
    two lines, so no library for it). torch's own default is a folder under /tmp, which
    restarts empty after a reboot."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ayg", "torch-compile")


def use_compile_cache(directory: str | None = None) -> str:
    """Point torch's compile caches (inductor's compiled graphs and their Triton kernels) at
    ``directory`` and return it. With ``None`` a ``TORCHINDUCTOR_CACHE_DIR`` the user set wins,
    else :func:`default_compile_cache`. The first run in a cache compiles (minutes for the
    paper's UNets); a later run with the same UNet shapes loads the compiled code and pays only
    the tracing (``first_step_seconds`` in ``losses.jsonl`` shows both). Process-wide: torch
    reads the variable whenever it opens its caches."""
    if directory is None:
        directory = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_compile_cache()
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    return directory


def plain_unet(unet: nn.Module) -> nn.Module:
    """The diffusers UNet inside a :class:`FastUNet` (or the module itself)."""
    return unet.inner if isinstance(unet, FastUNet) else unet


def set_memory_format(module: nn.Module, channels_last: bool) -> None:
    """4-D weights channels-last or contiguous, in place."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for p in module.parameters():
        if p.ndim == 4:
            p.data = p.data.contiguous(memory_format=fmt)


def configure_teacher(teacher: Any, runtime: Runtime) -> Any:
    """Apply ``runtime`` to a latent teacher (SD, video, MVDream) in place and return it.
    Teachers without a UNet and VAE (the toy teachers) are returned untouched."""
    if not (hasattr(teacher, "unet") and hasattr(teacher, "vae")):
        return teacher
    teacher.encoder_backward = runtime.encoder_backward
    teacher.encode_chunk = runtime.encoder_chunk
    unet = plain_unet(teacher.unet)
    set_memory_format(unet, runtime.channels_last)
    set_memory_format(teacher.vae, runtime.channels_last or runtime.encoder_channels_last)
    teacher.unet_channels_last = runtime.channels_last
    if runtime.compile != "none":
        use_compile_cache(runtime.compile_cache)
    if runtime.cuda_graphs or runtime.compile != "none":
        mv = getattr(teacher, "mv_attention", None)
        key = None if mv is None else (lambda: (mv.num_views, mv.enabled))
        teacher.unet = FastUNet(unet, runtime.cuda_graphs, runtime.compile, key=key)
    else:
        teacher.unet = unet
    if torch.device(teacher.device).type == "cuda":  # process-wide switches
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32
    return teacher


__all__ = [
    "COMPILE_MODES",
    "ENCODER_BACKWARDS",
    "NAIVE",
    "FastUNet",
    "Runtime",
    "compiled",
    "configure_teacher",
    "default_compile_cache",
    "plain_unet",
    "set_memory_format",
    "use_compile_cache",
]
