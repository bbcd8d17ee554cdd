"""Stage 2: GroundNLQ's multi-scale grounding model, extended with gaze (GazeNLQ).

Split in two so the query-independent half can be computed once per video and cached:
``embed_video`` (video and gaze embeddings) and ``ground`` (everything that sees the query).
With late fusion (``GroundingConfig.fusion``) the pyramid joins the query-independent half
(``pyramid``) and the per-query part shrinks to ``late``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.text.layers import masked_mean
from gazenlq.training.config import GroundingConfig
from gazenlq.training.layers import (
    MLP,
    Attention,
    ConvLN,
    DropPath,
    LayerScale,
    MaskedConv,
    TextBlock,
    VideoBlock,
    sinusoid,
)
from gazenlq.training.pyramid import end_to_end, split_levels, unpack


def _proj(c_in: int, c_out: int) -> nn.Sequential:
    """Two kernel-1 convolutions (per-token linear maps) with LayerNorm + ReLU."""
    return nn.Sequential(nn.Linear(c_in, c_out), nn.LayerNorm(c_out), nn.ReLU(),
                         nn.Linear(c_out, c_out), nn.LayerNorm(c_out), nn.ReLU())


def _plus_skip(y: torch.Tensor, skip: nn.Linear | None, x: torch.Tensor) -> torch.Tensor:
    """``y`` plus the linear projection of its input ``x`` when the model has one
    (``GroundingConfig.embed_skip``)."""
    return y if skip is None else y + skip(x)


class Head(nn.Module):
    """Shared across levels: ``depth`` x [conv k3, LN, ReLU] -> conv k3."""

    def __init__(self, dim: int, out: int, depth: int = 2) -> None:
        super().__init__()
        self.trunk = nn.ModuleList(ConvLN(dim, dim) for _ in range(depth))
        self.out = MaskedConv(dim, out, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: masked steps (every block's output is)."""
        for layer in self.trunk:
            x = layer(x, mask, masked=True)
        return self.out(x, mask, masked=True)[0]


class GazeFusion(nn.Module):
    """GazeNLQ: cross-attention gaze -> video (local) and text -> video, outputs added to the
    video embedding and refined by local self-attention.

    The gaze -> video attention does not see the query, so it is its own step
    (:meth:`attend_gaze`, run once per video in ``embed_video``); the rest runs per query.
    Late fusion (``query`` False) keeps only that step.
    """

    def __init__(self, cfg: GroundingConfig, query: bool = True) -> None:
        super().__init__()
        h = cfg.hidden
        self.ln_v, self.ln_g = nn.LayerNorm(h), nn.LayerNorm(h)
        self.ln_self = nn.LayerNorm(h) if query else None
        self.gaze_to_video = Attention(h, cfg.heads, cfg.window, dropout=cfg.dropout)
        if not query:
            return
        self.text_to_video = Attention(h, cfg.heads, None, dropout=cfg.dropout, null_key=True)
        self.refine = Attention(h, cfg.heads, cfg.window, dropout=cfg.dropout)
        self.mlp = MLP(h, cfg.mlp_ratio, cfg.dropout)
        self.ln_mlp = nn.LayerNorm(h)
        self.ls = nn.ModuleList(LayerScale(h, 1e-1) for _ in range(2))
        self.drop = DropPath(cfg.drop_path)

    def attend_gaze(self, video: torch.Tensor, gaze: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
        """Each step's local cross-attention to the gaze embeddings: the gaze context."""
        ctx = self.gaze_to_video(self.ln_v(video), self.ln_g(gaze), mask)
        return ctx * mask.unsqueeze(-1).to(ctx.dtype)

    def forward(self, video: torch.Tensor, gaze_ctx: torch.Tensor, mask: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        x = video + gaze_ctx + self.text_to_video(self.ln_v(video), text, text_mask)
        h = self.ln_self(x)
        x = x + self.drop(self.ls[0](self.refine(h, h, mask)))
        x = x + self.drop(self.ls[1](self.mlp(self.ln_mlp(x))))
        return x * mask.unsqueeze(-1).to(x.dtype)


class QueryGate(nn.Module):
    """Multiplies every video step by a vector made from the query (its masked mean token):
    ``x + x * W q``, and, for the gaze variants, adds the gaze context times its own query
    vector, ``g * W_g q``. Cross-attention alone passes the words on but not how well a
    step matches them (its weights sum to one); the products make the match of the words
    with what is seen, and separately with what is looked at, linear read-outs that a
    small model learns in a few epochs. The maps start at zero: the gate starts as the
    identity."""

    def __init__(self, dim: int, gaze: bool = False, looked: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.gaze_proj = nn.Linear(dim, dim) if gaze else None
        self.looked_proj = None
        if looked:  # zeroed below; its construction must not move the RNG of the rest
            with torch.random.fork_rng(devices=[]):
                self.looked_proj = nn.Linear(dim, dim)
        for layer in (self.proj, self.gaze_proj, self.looked_proj):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                gaze_ctx: torch.Tensor | None = None, looked: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gated steps ``[Q, T, D]`` and each step's match score with the query
        ``[Q, T]``: the sum of the products over the channels, ``x . W q (+ g . W_g q)
        (+ l . W_l q)``, ``l`` the embedded looked-at track, scaled by ``1/sqrt(D)`` (what
        the saliency loss trains; ``saliency_loss``)."""
        q = masked_mean(text, text_mask)
        prod = x * self.proj(q).unsqueeze(1)
        if self.gaze_proj is not None:
            prod = prod + gaze_ctx * self.gaze_proj(q).unsqueeze(1)
        if self.looked_proj is not None:
            prod = prod + looked * self.looked_proj(q).unsqueeze(1)
        return x + prod, prod.sum(-1) / math.sqrt(x.shape[-1])


class GroundingModel(nn.Module):
    """Video + text (+ gaze) -> per-level classification logits and regression distances.

    ``gaze_dim`` is the width of the gaze tokens from the frozen estimator (None for the
    no-gaze baseline). Inputs are padded to a multiple of ``cfg.length_multiple``; outputs of
    all levels are concatenated finest first (level ``l`` has ``T / 2**l`` points).
    """

    def __init__(self, cfg: GroundingConfig, gaze_dim: int | None = None) -> None:
        super().__init__()
        if (cfg.gaze == "none") != (gaze_dim is None):
            raise ValueError(f"gaze variant {cfg.gaze!r} needs gaze_dim set iff it uses gaze")
        if cfg.fusion not in ("early", "late"):
            raise ValueError(f"fusion {cfg.fusion!r}: expected 'early' or 'late'")
        late = cfg.fusion == "late"
        if late and (cfg.looked_at_feed or not cfg.query_gate):
            raise ValueError("late fusion meets the query in the query gate alone: it needs "
                             "query_gate=True and no looked_at_feed")
        self.cfg = cfg
        h = cfg.hidden
        self.video_embed = nn.ModuleList([ConvLN(cfg.video_dim, h), ConvLN(h, h)])
        self.text_embed = _proj(cfg.text_dim, h)
        self.video_skip = nn.Linear(cfg.video_dim, h) if cfg.embed_skip else None
        self.text_skip = nn.Linear(cfg.text_dim, h) if cfg.embed_skip else None
        self.text_blocks = nn.ModuleList(
            TextBlock(h, cfg.heads, cfg.mlp_ratio, cfg.dropout)
            for _ in range(0 if late else cfg.text_blocks))
        self.gaze_embed = _proj(gaze_dim, h) if gaze_dim else None
        self.gaze_skip = nn.Linear(gaze_dim, h) if gaze_dim and cfg.embed_skip else None
        self.fusion = GazeFusion(cfg, query=not late) if gaze_dim else None
        if cfg.looked_at_feed and not cfg.query_gate:
            raise ValueError("looked_at_feed enters through the query gate (query_gate=True)")
        self.gate = QueryGate(h, gaze=gaze_dim is not None, looked=cfg.looked_at_feed) \
            if cfg.query_gate else None
        self.looked_embed = None
        if cfg.looked_at_feed:  # from a forked RNG: the other weights stay what they were
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0x100C)
                self.looked_embed = nn.Linear(cfg.text_dim, h)
        n = cfg.stem_blocks + cfg.branch_blocks
        rates = torch.linspace(0, cfg.drop_path, n).tolist()
        self.stem = nn.ModuleList(
            VideoBlock(h, cfg.heads, cfg.window, cfg.mlp_ratio, 1, rates[i], cfg.dropout,
                       cfg.layer_scale, cross=not late) for i in range(cfg.stem_blocks))
        self.branch = nn.ModuleList(
            VideoBlock(h, cfg.heads, cfg.window, cfg.mlp_ratio, 2, rates[cfg.stem_blocks + i],
                       cfg.dropout, cfg.layer_scale, cross=not late)
            for i in range(cfg.branch_blocks))
        # late fusion: per point a LayerNorm, the gate, one shared [conv k3, LN, ReLU], and
        # each head's output convolution
        self.late_ln = nn.LayerNorm(h) if late else None
        self.late_trunk = ConvLN(h, h) if late else None
        self.cls_head = Head(h, 1, depth=0 if late else 2)
        self.reg_head = Head(h, 2, depth=0 if late else 2)
        self.scales = nn.Parameter(torch.ones(cfg.levels))
        self.register_buffer("position", sinusoid(cfg.max_len, h), persistent=False)
        nn.init.constant_(self.cls_head.out.conv.bias, -math.log((1 - cfg.prior_prob)
                                                                 / cfg.prior_prob))

    @property
    def late_fusion(self) -> bool:
        return self.cfg.fusion == "late"

    def embed_video(self, video: torch.Tensor, mask: torch.Tensor,
                    gaze: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query-independent part: video embedding (+ position) and, for the gaze variants,
        the gaze context (gaze embeddings attended from every step; ``GazeFusion``).
        Inputs hold at most ``cfg.max_len`` steps (longer videos are searched in windows)."""
        x = self.video_embedding(video, mask)
        g = None
        if self.gaze_embed is not None:
            if gaze is None:
                raise ValueError("this model was built with gaze; pass gaze tokens")
            g = _plus_skip(self.gaze_embed(gaze), self.gaze_skip, gaze)
            g = g * mask.unsqueeze(-1).to(x.dtype)
            g = self.fusion.attend_gaze(x, g, mask)
        return x, g

    def video_embedding(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The steps' embedding (+ position), before any gaze or query."""
        x = video
        for layer in self.video_embed:
            x = layer(x, mask)
        if self.video_skip is not None:  # masked: its bias must not reach padded steps
            x = x + self.video_skip(video) * mask.unsqueeze(-1).to(x.dtype)
        return x + self.position[: x.shape[1]].unsqueeze(0) * mask.unsqueeze(-1).to(x.dtype)

    def encode_text(self, tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        t = _plus_skip(self.text_embed(tokens), self.text_skip, tokens)
        t = t * text_mask.unsqueeze(-1).to(tokens.dtype)
        for block in self.text_blocks:
            t = block(t, text_mask)
        return t

    def encode_query(self, tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Late fusion's query vector ``[B, D]``: the text embedding of the tokens' mean
        (one vector, not a sequence: all the gate reads)."""
        m = masked_mean(tokens, text_mask)
        return _plus_skip(self.text_embed(m), self.text_skip, m)

    def _blocks(self, x: torch.Tensor, mask: torch.Tensor, text: torch.Tensor | None,
                text_mask: torch.Tensor | None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stem and branch blocks -> the pyramid's levels and their masks."""
        for block in self.stem:
            x, mask = block(x, mask, text, text_mask)
        feats, masks = [], []
        for i, block in enumerate(self.branch):
            if i == 0:
                feats.append(x)
                masks.append(mask)
            x, mask = block(x, mask, text, text_mask)
            feats.append(x)
            masks.append(mask)
        if not self.branch:
            feats, masks = [x], [mask]
        return feats, masks

    def ground(self, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None, mask: torch.Tensor,
               tokens: torch.Tensor, text_mask: torch.Tensor, with_match: bool = False,
               looked: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per-query part -> ``logits [B, M]``, ``distances [B, M, 2]`` (in units of each
        level's stride), ``point_mask [B, M]`` and, with ``with_match`` (training), the
        query gate's per-step match scores ``[B, T]``. ``looked`` ``[B, T, text_dim]``: the
        semantic head's embeddings, for a model with ``cfg.looked_at_feed``."""
        if self.late_fusion:
            return self.late(*self.pyramid(video_emb, gaze_emb, mask), tokens, text_mask,
                             with_match)
        text = self.encode_text(tokens, text_mask)
        x = video_emb
        if self.fusion is not None:
            x = self.fusion(x, gaze_emb, mask, text, text_mask)
        looked_ctx = None
        if self.looked_embed is not None:
            if looked is None:
                raise ValueError("this model feeds the looked-at track; pass looked")
            looked_ctx = self.looked_embed(looked) * mask.unsqueeze(-1).to(x.dtype)
        match = None
        if self.gate is not None:
            x, match = self.gate(x, text, text_mask, gaze_emb, looked_ctx)
        feats, masks = self._blocks(x, mask, text, text_mask)
        out = (*self.heads(feats, masks), torch.cat(masks, 1))
        if with_match:
            if match is None:
                raise ValueError("match scores need the query gate (query_gate=True)")
            return (*out, match)
        return out

    def ground_clips(self, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None,
                     mask: torch.Tensor, clip_of: torch.Tensor, tokens: torch.Tensor,
                     text_mask: torch.Tensor, with_match: bool = False,
                     looked: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """:meth:`ground` of every query on its clip (``clip_of``: the clip's row per query;
        ``looked`` per query): late fusion computes each clip's pyramid once."""
        if not self.late_fusion:
            return self.ground(video_emb[clip_of], None if gaze_emb is None
                               else gaze_emb[clip_of], mask[clip_of], tokens, text_mask,
                               with_match, looked)
        feats, masks, gaze = self.pyramid(video_emb, gaze_emb, mask)
        return self.late([f[clip_of] for f in feats], [m[clip_of] for m in masks],
                         None if gaze is None else [g[clip_of] for g in gaze], tokens,
                         text_mask, with_match)

    def pyramid(self, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None,
                mask: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
        """Late fusion's query-independent pyramid: the blocks over the video embedding (+
        the gaze context) -> levels, masks and, for the gaze variants, the gaze context at
        every level (max-pooled as the blocks' skip path pools), which the gate reads."""
        x = video_emb if gaze_emb is None else video_emb + gaze_emb
        feats, masks = self._blocks(x, mask, None, None)
        if gaze_emb is None:
            return feats, masks, None
        gaze = [gaze_emb]
        for m in masks[1:]:
            g = F.max_pool1d(gaze[-1].transpose(1, 2), 3, 2, padding=1).transpose(1, 2)
            gaze.append(g * m.unsqueeze(-1).to(g.dtype))
        return feats, masks, gaze

    def late(self, feats: list[torch.Tensor], masks: list[torch.Tensor],
             gaze: list[torch.Tensor] | None, tokens: torch.Tensor, text_mask: torch.Tensor,
             with_match: bool = False) -> tuple[torch.Tensor, ...]:
        """Late fusion's per-query part on the pyramid's points (every level at once, laid
        end to end): LayerNorm, the query gate with the query vector (and the gaze context's
        own product), one shared [conv k3, LN, ReLU], the heads' output convolutions.
        Outputs as :meth:`ground`'s; the match scores are the finest level's."""
        q = self.encode_query(tokens, text_mask).unsqueeze(1)
        x, m = end_to_end([self.late_ln(f) for f in feats], masks)
        x = x * m.unsqueeze(-1).to(x.dtype)
        g = None if gaze is None else end_to_end(gaze, masks)[0]
        x, match = self.gate(x, q, m[:, :1] | True, g)
        x = self.late_trunk(x, m)
        out = (*self._outputs(x, m, [f.shape[1] for f in feats]), torch.cat(masks, 1))
        return (*out, match[:, :feats[0].shape[1]]) if with_match else out

    def ground_packed(self, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None,
                      mask: torch.Tensor, tokens: torch.Tensor, text_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, ...]:
        """:meth:`late` on packed pyramids (``pyramid.pack``, what the per-video graph of a
        late-fusion model caches) of steps ``mask``."""
        feats, masks = unpack(video_emb, mask, self.cfg.levels)
        gaze = None if gaze_emb is None else unpack(gaze_emb, mask, self.cfg.levels)[0]
        return self.late(feats, masks, gaze, tokens, text_mask)

    def heads(self, feats: list[torch.Tensor], masks: list[torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads over all levels in one pass, laid end to end (``end_to_end``): the
        graph holds one copy of each head."""
        return self._outputs(*end_to_end(feats, masks), [f.shape[1] for f in feats])

    def _outputs(self, x: torch.Tensor, m: torch.Tensor, sizes: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads on levels laid end to end -> logits ``[B, M]`` and distances scaled per
        level ``[B, M, 2]``."""
        cls = split_levels(self.cls_head(x, m)[..., 0], sizes)
        reg = split_levels(self.reg_head(x, m), sizes)
        dists = [torch.relu(r * self.scales[level]) for level, r in enumerate(reg)]
        return torch.cat(cls, 1), torch.cat(dists, 1)

    def forward(self, video: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                text_mask: torch.Tensor, gaze: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v, g = self.embed_video(video, mask, gaze)
        return self.ground(v, g, mask, tokens, text_mask)
