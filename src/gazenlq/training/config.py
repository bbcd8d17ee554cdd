"""Model and training configs: dataclasses, one source of truth, stored in every checkpoint.

``PRESETS`` holds named configurations (open_clip style registry): ``paper`` has the
published GroundNLQ / GazeNLQ sizes, ``small`` trains on 2 CPU cores in minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from gazenlq.text import TextEncoderConfig

ESTIMATOR_VARIANTS: tuple[str, ...] = ("gaze", "neg_gaze", "uniform_gaze")
"""Variants whose gaze tokens come from the stage-1 gaze estimator."""
POOL_VARIANTS: tuple[str, ...] = ("gaze_reg", "gaze_pool")
"""Variants whose gaze tokens come from attention pooling of the cell features
(``gazenlq.training.gaze_pool``): gaze at training time only, no stage 1."""
GAZE_VARIANTS: tuple[str, ...] = ("none", *ESTIMATOR_VARIANTS, *POOL_VARIANTS)


@dataclass(frozen=True)
class GazeEstimatorConfig:
    """Stage 1 (gaze.md section 1): features -> GLU x N -> self-attention -> embedding."""

    in_dim: int = 512
    hidden: int = 384
    glu_layers: int = 5
    heads: int = 4
    embed_dim: int = 384
    grid: int | None = 4
    """Cells per side when the input features have a spatial grid layout (EgoSim), else None."""
    map_size: int = 64
    temperature: float = 0.07
    dropout: float = 0.1


@dataclass(frozen=True)
class GazePoolConfig:
    """Gaze-VLM's attention pooling (gaze.md section 5; ``gazenlq.training.gaze_pool``): one
    query per step attends over the ``grid`` x ``grid`` cells of the gaze features, keys and
    query of ``dim`` values; 'gaze_reg' adds ``weight`` x KL(P_gaze || A) to the loss
    (100 as in Gaze-VLM's released code; not tuned here), P_gaze the ground-truth gaze map
    pooled to the cells, plus ``eps``, normalised. 'gaze_pool' is the same with weight 0."""

    grid: int = 4
    dim: int = 64
    weight: float = 100.0
    eps: float = 1e-4


@dataclass(frozen=True)
class GroundingConfig:
    """Stage 2: GroundNLQ's multi-scale transformer, extended with gaze; early fusion (its
    own) or late (``fusion``)."""

    video_dim: int = 256
    text_dim: int = 384
    hidden: int = 384
    heads: int = 4
    window: int = 9
    text_blocks: int = 4
    stem_blocks: int = 4
    branch_blocks: int = 6
    mlp_ratio: int = 4
    drop_path: float = 0.1
    dropout: float = 0.0
    layer_scale: float = 1e-4
    """Initial scale of every video block's residual branches (ActionFormer / GroundNLQ)."""
    embed_skip: bool = False
    """Add linear projections of the raw video features, query tokens and gaze tokens to
    their embeddings (GroundNLQ's [conv, LN, ReLU] x 2). The nonlinear paths alone lose what
    the features say linearly: which objects a step shows, which object a query names."""
    query_gate: bool = True
    """Multiply the video steps by a query vector before the blocks (``QueryGate``)."""
    fusion: str = "early"
    """Where the query meets the video. 'early' (GroundNLQ): before the pyramid and by
    cross-attention in every block, so the whole pyramid runs per query. 'late' (SnAG's
    late fusion): the pyramid never sees the query, so it is computed once per video
    window (the per-video graph, cached with the index); per query only the query gate
    and one kernel-3 layer run on the pyramid's points before the heads. The small preset
    is late (3-4x faster search, more accurate on EgoSim: docs/coarse-to-fine.md); the
    default stays early, the paper preset's and every checkpoint's from before the field."""
    max_len: int = 2560
    gaze: str = "gaze"
    """'none' (GroundNLQ baseline), 'gaze' (GazeNLQ), 'neg_gaze' (GazeNLQ*), 'uniform_gaze'
    (control: the gaze pathway fed a uniform map, so the cell features without the gaze),
    'gaze_reg' (Gaze-VLM: attention pooling of the cells regularised towards the gaze in
    training, no gaze at inference) and 'gaze_pool' (its twin without the regulariser)."""
    regression_ranges: tuple[tuple[float, float], ...] = (
        (0, 4), (2, 8), (4, 16), (8, 32), (16, 64), (32, 128), (64, 10_000))
    centre_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    prior_prob: float = 0.01
    looked_at_feed: bool = False
    """Feed the semantic head's looked-at embeddings (what the wearer looked at, per step)
    into the query gate as a third product with the query (``QueryGate``). Needs the
    semantic head (``gaze-train --looked-at``)."""
    saliency_weight: float = 0.0
    """Weight of the saliency loss on the query gate's match scores (0: GroundNLQ's losses
    only; ``targets.saliency_loss``)."""

    @property
    def levels(self) -> int:
        return self.branch_blocks + 1

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(2**i for i in range(self.levels))

    @property
    def length_multiple(self) -> int:
        """Inputs are padded to a multiple of this (the coarsest stride)."""
        return 2 ** (self.levels - 1)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + linear warm-up + cosine, clipping, EMA (grounding.md section 4)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    epochs: int = 13
    warmup_epochs: int = 5
    batch_size: int = 8
    clip_grad: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0


@dataclass(frozen=True)
class CoarseConfig:
    """The coarse stage of coarse-to-fine search (``gazenlq.training.coarse``): span
    embeddings of ``span`` steps and query embeddings of ``dim`` values, trained beside
    stage 2 by multi-positive InfoNCE at ``temperature`` (loss weight ``weight``); ``gaze``
    feeds the gaze context into the span embeddings (gaze variants only)."""

    enabled: bool = False
    span: int = 16
    dim: int = 128
    gaze: bool = True
    temperature: float = 0.05
    weight: float = 1.0


@dataclass(frozen=True)
class SemanticConfig:
    """The semantic gaze-target head (``gazenlq.training.semantic``): per step, a label
    embedding of the looked-at object in the text encoder's noun space, an MLP of ``hidden``
    units trained beside stage 2 by InfoNCE (learned temperature from ``temperature``, loss
    weight ``weight``) on the steps a looked-at file labels (``gaze-train --looked-at``)."""

    enabled: bool = False
    hidden: int = 256
    temperature: float = 0.07
    weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved as JSON beside every checkpoint."""

    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    estimator: GazeEstimatorConfig = field(default_factory=GazeEstimatorConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    stage1: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-3, epochs=10, warmup_epochs=1, batch_size=16))
    stage2: OptimConfig = field(default_factory=OptimConfig)
    stage1_window: int = 64
    """Steps per stage-1 training window (InfoNCE negatives: the other steps of the batch)."""
    train_max_len: int | None = None
    """Crop training clips to at most this many steps around the answers (None: whole clip)."""
    workers: int = 0
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'; mixed precision on
    CUDA (gazenlq.training.device)."""
    freeze_estimator: bool = True
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    """Off by default (and in checkpoints from before it existed); on in the presets."""
    pool: GazePoolConfig = field(default_factory=GazePoolConfig)
    """The attention pooling of the 'gaze_reg' / 'gaze_pool' variants."""
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    """Off by default; on with ``gaze-train --looked-at`` (needs a looked-at file)."""

    @property
    def gaze_reg_weight(self) -> float:
        """Lambda of the attention regulariser: ``pool.weight`` for 'gaze_reg', else 0."""
        return self.pool.weight if self.grounding.gaze == "gaze_reg" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    if not isinstance(d, dict):  # a damaged config must not become the defaults
        raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            value = _from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[f.name] = value
    return cls(**kwargs)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(
        estimator=GazeEstimatorConfig(in_dim=1536, grid=None),
        grounding=GroundingConfig(video_dim=2304, text_dim=384, hidden=384),
        stage2=OptimConfig(lr=2.5e-5, epochs=10, warmup_epochs=4, batch_size=8),
        coarse=CoarseConfig(enabled=True),
    ),
    "small": TrainConfig(
        estimator=GazeEstimatorConfig(hidden=128, glu_layers=5, heads=4, embed_dim=128),
        grounding=GroundingConfig(hidden=96, heads=4, text_blocks=1, stem_blocks=2,
                                  branch_blocks=6, mlp_ratio=2, drop_path=0.0,
                                  max_len=2560, layer_scale=0.1, saliency_weight=1.0,
                                  embed_skip=True, fusion="late"),
        stage1=OptimConfig(lr=1e-3, weight_decay=0.05, epochs=2, warmup_epochs=1,
                           batch_size=16, ema_decay=0.99),
        stage2=OptimConfig(lr=2e-3, weight_decay=0.05, epochs=4, warmup_epochs=1,
                           batch_size=8, ema_decay=0.99),
        train_max_len=256,
        coarse=CoarseConfig(enabled=True),
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with top-level fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
