"""The toy world as the ``toy`` preset and ``ayg eval`` use it: a vocabulary of coloured shapes
and motions (``vocab``) and the small teachers and classifiers (``nets``, weights in
``weights/``).

The world's analytic renderer, its dataset samplers and the trainer that made the weights live
in the repository's ``tools/toyworld/`` and are not part of the installed package.
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
