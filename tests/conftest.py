"""Shared test set-up: every test starts from the process's torch backend flags.

The teacher runtimes (``ayg.teachers.runtime.configure``) set TF32 and cuDNN autotuning for the
whole process, as a run wants; here each test gets the flags back as they were, so a GPU test
that configures a runtime does not loosen the precision of the tests after it.
"""

from __future__ import annotations

import pytest
import torch

_FLAGS = (
    (torch.backends.cuda.matmul, "allow_tf32"),
    (torch.backends.cudnn, "allow_tf32"),
    (torch.backends.cudnn, "benchmark"),
)


@pytest.fixture(autouse=True)
def _restore_backend_flags():
    saved = [getattr(obj, name) for obj, name in _FLAGS]
    yield
    for (obj, name), value in zip(_FLAGS, saved, strict=True):
        setattr(obj, name, value)
