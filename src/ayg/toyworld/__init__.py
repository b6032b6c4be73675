"""The toy world (DESIGN §7): a vocabulary of coloured shapes and motions, an independent
analytic renderer for them, datasets that follow the camera and fps distributions of stages 1
and 2, and (elsewhere in this package) the small teachers and classifiers trained on them.

Modules: ``vocab`` (prompts, tokens, held-out pairs), ``scene`` (solids, motions, ray-marching
renderer), ``data`` (batch samplers for teachers and classifiers).
"""

from ayg.toyworld.vocab import (
    COLOURS,
    HELD_OUT,
    MOTION_CLASSES,
    MOTIONS,
    SHAPES,
    ToyPrompt,
    parse_prompt,
    tokenize,
)

__all__ = [
    "COLOURS",
    "HELD_OUT",
    "MOTIONS",
    "MOTION_CLASSES",
    "SHAPES",
    "ToyPrompt",
    "parse_prompt",
    "tokenize",
]
