"""A run's peak memory, predicted from shapes alone (``mlx-align plan``, ``--memory-limit``).

The peak of a training step is what stays (the weights; the trainable
weights with their gradient and AdamW's two moments) plus what the worst
micro-batch leaves for the backward pass (every block's activations) plus
the largest short-lived buffer (one attention call's scores and their
gradient; the logits of one piece of the head). Each term is a count of
elements from the model's shapes (``model/footprint.py``) and the batch's
(``Geometry``) times a coefficient measured on this package's own compiled
step (``bench/plan.py`` prints predicted against measured):

- ``ACTIVATION_COPIES``: bytes a block keeps per token, in units of the
  block's linear inputs + outputs (``Footprint.token_width``) at the
  activations' dtype. A llama block keeps each linear's input and output
  and a few norm inputs: about 1.4 of that width.
- ``KEPT_SCORES``: attention kept per block, in float32 copies of the
  (heads x queries x keys) matrix: about one, the softmax (MLX's attention
  off Metal's fused kernel is the plain composition, differentiated).
- ``SCORE_COPIES``: the widest attention call's (heads x queries x keys)
  float32 buffers alive at once in its backward pass (the softmax's
  gradient and its inputs): about three.

The three were fitted by least squares to 23 measured peaks (the 3M
model, Qwen2.5-0.5B's shape at 2, 4 and 24 blocks; DPO and SFT; 250 to
2,000 tokens a row): the largest error was 7.6%.
- ``LOGIT_COPIES``: one piece of the output head's float32 logits and its
  softmax and gradient.

Gradient checkpointing keeps each block's input and recomputes one block
at a time. Measured, what stays per block is ``CHECKPOINT_COPIES`` (about
2.25) copies of the hidden width per position, and the recomputed block's
attention adds ``RECOMPUTED_SCORES`` (0.4) of the widest call's buffers:
fitted on seven checkpointed peaks (the 3M model, DPO and SFT at 500 to
2,000 tokens; the 1.5B shape's DPO at 2,048), largest error 1.8%.

A sampling stage has two phases that are not held together: a rollout (the
sampled rows' KV caches and the fused sampling copy, freed when it ends)
and the step. Each part names its phase (none: held all run), and the peak
is the larger phase's (``MemoryPlan.phase_peaks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlx_align.model.footprint import Footprint
from mlx_align.model.logprobs import CHUNK_ELEMENTS, LOGITS_IN_ONE_PIECE, MIN_CHUNK_ROWS

ACTIVATION_COPIES = 1.4
KEPT_SCORES = 0.9
SCORE_COPIES = 2.9
LOGIT_COPIES = 3.0
CHECKPOINT_COPIES = 2.25
RECOMPUTED_SCORES = 0.4
ADAM_COPIES = 4  # the weight, its gradient, AdamW's two moments
FLOAT32 = 4
GB = 1e9


def gb(nbytes: float) -> str:
    """``1.23 GB``; three significant digits below a GB (``0.0403 GB``)."""
    value = nbytes / GB
    return f"{value:.2f} GB" if value >= 0.995 else f"{value:.3g} GB"


@dataclass(frozen=True)
class Geometry:
    """What one micro-batch runs through the model, in token positions."""

    positions: int  # through every block
    attention: int  # Σ over attention calls of rows x queries x keys
    widest_call: int  # the largest single call's rows x queries x keys
    logit_positions: int  # positions the head forms logits for

    @classmethod
    def full_rows(cls, rows: int, width: int) -> Geometry:
        """``rows`` right-padded rows of ``width`` tokens."""
        area = rows * width * width
        return cls(rows * width, area, area, rows * width)

    @classmethod
    def shared_prompt(
        cls, prompts: int, prompt_width: int, completions: int, completion_width: int
    ) -> Geometry:
        """Each prompt once, then its completions attending to it (a KV cache)."""
        first = prompts * prompt_width * prompt_width
        second = completions * completion_width * (prompt_width + completion_width)
        return cls(
            prompts * prompt_width + completions * completion_width,
            first + second,
            max(first, second),
            completions * completion_width,
        )

    def cost(self, footprint: Footprint) -> float:
        """Bytes this batch adds to the step (to pick the worst one)."""
        return activations(footprint, self, checkpoint=False) + transient(
            footprint, self
        )


def activations(footprint: Footprint, geometry: Geometry, checkpoint: bool) -> float:
    """What the blocks keep for the backward pass."""
    per_block = (
        ACTIVATION_COPIES
        * geometry.positions
        * footprint.token_width
        * footprint.dtype_bytes
        + KEPT_SCORES * geometry.attention * footprint.query_heads * FLOAT32
    )
    if not checkpoint:
        return footprint.layers * per_block
    inputs = (
        CHECKPOINT_COPIES
        * geometry.positions
        * footprint.hidden
        * footprint.dtype_bytes
    )
    recomputed = RECOMPUTED_SCORES * geometry.widest_call * footprint.query_heads * FLOAT32  # fmt: skip
    return footprint.layers * inputs + per_block + recomputed


def transient(footprint: Footprint, geometry: Geometry) -> float:
    """The widest attention call's buffers in its backward pass."""
    return SCORE_COPIES * geometry.widest_call * footprint.query_heads * FLOAT32


def logits(footprint: Footprint, geometry: Geometry) -> float:
    """One piece of the head's logits (``logprobs.head_logps``'s chunks)."""
    vocab, positions = footprint.vocab, geometry.logit_positions
    if positions * vocab > LOGITS_IN_ONE_PIECE:
        positions = min(positions, max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab))
    return LOGIT_COPIES * positions * vocab * FLOAT32


@dataclass(frozen=True)
class Part:
    name: str
    bytes: float
    note: str = ""
    phase: str = ""  # "": held all run; else only while that phase runs


STEP = "step"  # the training step's forward and backward
SAMPLING = "sampling"  # a rollout: the sampler's caches, freed before the step


@dataclass
class MemoryPlan:
    """The parts of a run's peak, and the settings it was planned for."""

    stage: str
    parts: list[Part] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    geometry: Geometry | None = None  # the worst micro-batch
    choices: dict[str, object] = field(default_factory=dict)  # settings it decided

    def phase_peaks(self) -> dict[str, float]:
        """``{phase: what is held while it runs}``: the parts held all run plus its own."""
        held = sum(p.bytes for p in self.parts if not p.phase)
        phases = dict.fromkeys(p.phase for p in self.parts if p.phase) or {"": 0}
        return {
            phase: held + sum(p.bytes for p in self.parts if p.phase == phase)
            for phase in phases
        }

    @property
    def peak(self) -> float:
        """The largest phase: a rollout's caches are freed before the step runs."""
        return max(self.phase_peaks().values())

    def add(self, name: str, nbytes: float, note: str = "", phase: str = "") -> None:
        self.parts.append(Part(name, nbytes, note, phase))

    def lines(self) -> list[str]:
        """The table ``mlx-align plan`` prints; its last line is the peak."""
        width = max(len(p.name) for p in self.parts)
        peaks = self.phase_peaks()
        out = [f"memory plan for mlx-align {self.stage}:", *self.notes]
        for part in sorted(self.parts, key=lambda p: list(peaks).index(p.phase) if p.phase else -1):  # fmt: skip
            note = f"({part.note})" if part.note else ""
            phase = f"[{part.phase}] " if len(peaks) > 1 and part.phase else ""
            line = f"  {part.name:<{width}}  {part.bytes / GB:8.3f} GB  {phase}{note}"
            out.append(line.rstrip())
        if len(peaks) > 1:
            out += [f"  while {phase}: {gb(nbytes)}" for phase, nbytes in peaks.items()]
        out.append(f"peak memory: {gb(self.peak)}")
        return out


def training_parts(
    plan: MemoryPlan,
    footprint: Footprint,
    geometry: Geometry,
    checkpoint: bool,
    vocabulary_head: bool = True,
) -> None:
    """The parts every training step has: weights, trainable state, the worst
    batch; the logits with ``vocabulary_head`` (a reward model scores instead)."""
    plan.geometry = geometry
    trained = "adapters" if footprint.frozen_bytes else "every weight"
    plan.add(
        "weights",
        footprint.frozen_bytes,
        "frozen base" if footprint.frozen_bytes else "",
    )
    plan.add(
        "trainable + optimizer",
        ADAM_COPIES * footprint.trainable_bytes,
        f"{trained}: weight, gradient, AdamW's 2 moments",
    )
    what = f"{geometry.positions:,} positions, {footprint.layers} blocks"
    plan.add(
        "activations",
        activations(footprint, geometry, checkpoint),
        what + (", checkpointed" if checkpoint else ""),
        STEP,
    )
    plan.add("attention buffers", transient(footprint, geometry), "widest call", STEP)
    if vocabulary_head:
        plan.add(
            "logits / log-probs",
            logits(footprint, geometry),
            f"{footprint.vocab:,}-token vocabulary",
            STEP,
        )
