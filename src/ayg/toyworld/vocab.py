"""The toy world's vocabulary and its text "encoder".

Prompts read "a COLOUR SHAPE [MOTION]": case, punctuation and words outside the vocabulary are
ignored, so "A red ball, spinning!" and "a red ball spinning, front view" mean the same thing
to the teachers. A prompt a user types is read strictly (``check_user_prompt``): a word
outside the vocabulary is refused rather than silently dropped.

Two readings of a prompt:

* ``parse_prompt(text) -> ToyPrompt`` — what the analytic renderer draws. It needs a colour and
  a shape; the motion is optional (None = the object stands still).
* ``tokenize(text) -> LongTensor (3,)`` — what the toy teachers are conditioned on: (colour id,
  shape id, motion id). Every slot has a reserved *null* id (the last one) used when the prompt
  names nothing for that slot; the empty prompt is all-null, i.e. unconditional. The motion slot
  also knows "static": the paper's video negative prompt "low motion, static statue, not moving,
  no motion" (table 4) maps to (null, null, static).

Ids equal class indices: colour ∈ 0..3, shape ∈ 0..3, motion ∈ 0..3 (static, spinning, swaying,
nodding), so a classifier's labels are the token columns. The null ids are 4, 4, 4.

View words ("front view", "side view", "back view", "overhead view", D.3) are not in the
vocabulary and are therefore ignored by the toy text encoder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("ball", "cube", "cone", "ring")
MOTIONS: tuple[str, ...] = ("spinning", "swaying", "nodding")
# Motion classes for conditioning and classification: "static" first, then MOTIONS.
MOTION_CLASSES: tuple[str, ...] = ("static",) + MOTIONS

# RGB of each colour (the object's main tone; the renderer derives the second tone from it).
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}

COLOUR_NULL = len(COLOURS)  # 4
SHAPE_NULL = len(SHAPES)  # 4
MOTION_NULL = len(MOTION_CLASSES)  # 4
MOTION_STATIC = 0
NULL_TOKENS: tuple[int, int, int] = (COLOUR_NULL, SHAPE_NULL, MOTION_NULL)
# Number of embeddings per slot, nulls included.
VOCAB_SIZES: tuple[int, int, int] = (len(COLOURS) + 1, len(SHAPES) + 1, len(MOTION_CLASSES) + 1)

# (colour, shape) pairs the video teacher never sees moving: composing them tests generalisation.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "ball"), ("green", "ring"), ("blue", "cone"), ("yellow", "cube")}
)

VIDEO_NEGATIVE_PROMPT = "low motion, static statue, not moving, no motion"

# Inflections accepted for the motion words ("a red ball spins").
_MOTION_FORMS: dict[str, str] = {
    **{w: "spinning" for w in ("spinning", "spin", "spins")},
    **{w: "swaying" for w in ("swaying", "sway", "sways")},
    **{w: "nodding" for w in ("nodding", "nod", "nods")},
}
# Single words and two-word phrases that mean "no motion".
_STATIC_WORDS = frozenset({"static", "still", "statue", "motionless", "stationary"})
_STATIC_PHRASES = frozenset({("not", "moving"), ("no", "motion"), ("low", "motion")})

_WORD_RE = re.compile(r"[a-z]+")


def vocabulary_line() -> str:
    """The vocabulary as one line (used in error messages and --help)."""
    return (
        'toy prompts are "a COLOUR SHAPE [MOTION]" with COLOUR in {'
        + ", ".join(COLOURS)
        + "}, SHAPE in {"
        + ", ".join(SHAPES)
        + "}, MOTION in {"
        + ", ".join(MOTIONS)
        + "}"
    )


@dataclass(frozen=True)
class ToyPrompt:
    """A parsed toy prompt. ``motion`` is one of MOTIONS or None (static)."""

    colour: str
    shape: str
    motion: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS or self.shape not in SHAPES:
            raise ValueError(
                f"unknown colour/shape ({self.colour!r}, {self.shape!r}); {vocabulary_line()}"
            )
        if self.motion is not None and self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; {vocabulary_line()}")

    @property
    def text(self) -> str:
        """The canonical prompt text, e.g. "a red ball spinning"."""
        return f"a {self.colour} {self.shape}" + (f" {self.motion}" if self.motion else "")

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT

    @property
    def motion_class(self) -> int:
        """Index into MOTION_CLASSES (0 = static)."""
        return 0 if self.motion is None else MOTION_CLASSES.index(self.motion)

    def tokens(self) -> Tensor:
        """LongTensor (3,): colour, shape, motion ids (static when motion is None)."""
        return torch.tensor(
            [COLOURS.index(self.colour), SHAPES.index(self.shape), self.motion_class],
            dtype=torch.long,
        )

    def __str__(self) -> str:
        return self.text


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _read(text: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, motion class) named in the text, each None when absent. The first word
    of each kind wins; a motion verb wins over a "static" word."""
    words = _words(text)
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    motion = next((_MOTION_FORMS[w] for w in words if w in _MOTION_FORMS), None)
    if motion is None:
        pairs = set(zip(words, words[1:], strict=False))
        if any(w in _STATIC_WORDS for w in words) or pairs & _STATIC_PHRASES:
            motion = "static"
    return colour, shape, motion


def parse_prompt(text: str | ToyPrompt) -> ToyPrompt:
    """Parse "a COLOUR SHAPE [MOTION]"; raises ValueError (one line) without a colour or shape."""
    if isinstance(text, ToyPrompt):
        return text
    colour, shape, motion = _read(text)
    if colour is None or shape is None:
        missing = " and ".join(k for k, v in (("colour", colour), ("shape", shape)) if v is None)
        raise ValueError(f"no known {missing} in prompt {text!r}; {vocabulary_line()}")
    return ToyPrompt(colour, shape, None if motion == "static" else motion)


_FILLERS = frozenset({"a", "an", "the"})
_KNOWN_WORDS = (
    frozenset(COLOURS)
    | frozenset(SHAPES)
    | frozenset(_MOTION_FORMS)
    | _STATIC_WORDS
    | frozenset(w for pair in _STATIC_PHRASES for w in pair)
    | _FILLERS
)


def check_user_prompt(text: str) -> ToyPrompt:
    """``parse_prompt`` for a prompt a user typed, strictly: a word outside the vocabulary, or
    two colours, shapes or motions, is refused in one line instead of being ignored (in "a blue
    cone dancing" the motion would silently be lost). The teachers' own prompts (view words,
    the negative prompt) go through the lenient ``tokenize``."""
    words = _words(text)
    unknown = [w for w in dict.fromkeys(words) if w not in _KNOWN_WORDS]
    if unknown:
        listed = ", ".join(repr(w) for w in unknown)
        raise ValueError(
            f"the toy world does not know {listed} in prompt {text!r}; {vocabulary_line()} "
            "(leave MOTION out for an object that stands still)"
        )
    for kind, vocab in (("colours", COLOURS), ("shapes", SHAPES)):
        named = list(dict.fromkeys(w for w in words if w in vocab))
        if len(named) > 1:
            raise ValueError(f"prompt {text!r} names two {kind} ({', '.join(named)}); give one")
    motions = list(dict.fromkeys(_MOTION_FORMS[w] for w in words if w in _MOTION_FORMS))
    if len(motions) > 1:
        raise ValueError(f"prompt {text!r} names two motions ({', '.join(motions)}); give one")
    return parse_prompt(text)


def tokenize(text: str | ToyPrompt) -> Tensor:
    """LongTensor (3,) = (colour id, shape id, motion id); a slot the text does not name is null.

    ``tokenize("")`` is (4, 4, 4), unconditional; ``tokenize(VIDEO_NEGATIVE_PROMPT)`` is
    (4, 4, 0): null appearance, static motion. A ToyPrompt is tokenized with motion static when
    its motion is None.
    """
    if isinstance(text, ToyPrompt):
        return text.tokens()
    colour, shape, motion = _read(text)
    ids = [
        COLOURS.index(colour) if colour else COLOUR_NULL,
        SHAPES.index(shape) if shape else SHAPE_NULL,
        MOTION_CLASSES.index(motion) if motion else MOTION_NULL,
    ]
    return torch.tensor(ids, dtype=torch.long)


def tokenize_batch(texts: Sequence[str | ToyPrompt]) -> Tensor:
    """LongTensor (B, 3): ``tokenize`` of each text."""
    if len(texts) == 0:
        return torch.empty(0, 3, dtype=torch.long)
    return torch.stack([tokenize(t) for t in texts])


def detokenize(tokens: Tensor) -> str:
    """Readable text of a (3,) token triple, e.g. "a red ball spinning" or "<null> <null> static"."""
    c, s, m = (int(x) for x in tokens.tolist())
    parts = [
        COLOURS[c] if c < len(COLOURS) else "<null>",
        SHAPES[s] if s < len(SHAPES) else "<null>",
    ]
    if m < len(MOTION_CLASSES):
        parts.append(MOTION_CLASSES[m])
    return ("a " if c < len(COLOURS) else "") + " ".join(parts)


def all_prompts(motion: bool | None = None) -> list[ToyPrompt]:
    """Every (colour, shape[, motion]) prompt: static only (motion=False), moving only (True),
    or both (None)."""
    motions: list[str | None]
    motions = [None] if motion is False else list(MOTIONS) if motion else [None, *MOTIONS]
    return [ToyPrompt(c, s, m) for c in COLOURS for s in SHAPES for m in motions]
