"""End-to-end training of one configuration: stage 1 (gaze estimator) then stage 2
(grounding), each validated every epoch, then the official metrics on the test split."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gazenlq.atomic import write_json_atomic
from gazenlq.errors import GazeNLQError
from gazenlq.gaze.looked_at import FILE_NAME as LOOKED_AT
from gazenlq.gaze.looked_at import LookedAt, read_looked_at, step_labels
from gazenlq.gaze.metrics import cc, kl_div
from gazenlq.nlq.annotations import QueryTable, load_queries
from gazenlq.nlq.evaluation import evaluate
from gazenlq.nlq.submission import write_submission
from gazenlq.store import FeatureStore, store_path
from gazenlq.store.remote import Location
from gazenlq.text import build_text_encoder, load_tokenizer
from gazenlq.timegrid import TimeGrid
from gazenlq.training import checkpoint, distributed, trainer
from gazenlq.training.coarse import coarse_loss
from gazenlq.training.config import ESTIMATOR_VARIANTS, TrainConfig
from gazenlq.training.data import (
    ClipItem,
    GazeWindows,
    GroundingCollate,
    GroundingDataset,
    TextFeatures,
    clip_items,
)
from gazenlq.training.device import model_device, resolve_device
from gazenlq.training.estimator import GazeEstimator, cell_shares
from gazenlq.training.gaze_cache import GazeTokens
from gazenlq.training.gaze_pool import GazePool, attention_kl
from gazenlq.training.infer import predict
from gazenlq.training.model import GazeNLQ, with_dims
from gazenlq.training.semantic import noun_embedding, semantic_loss
from gazenlq.training.targets import PositiveNormaliser, grounding_loss


@dataclass(frozen=True)
class DataPaths:
    """Stores directory (or URL prefix) and Ego4D NLQ annotation files of the splits."""

    stores: Location
    train: Path
    val: Path
    test: Path | None = None
    looked_at: Path | None = None
    """What the wearer looked at (``gaze.looked_at``), for the semantic head."""

    @classmethod
    def egosim(cls, root: Path) -> DataPaths:
        """The layout ``gaze-synth`` writes."""
        ann = root / "annotations"
        return cls(root / "stores", ann / "nlq_train.json", ann / "nlq_val.json",
                   ann / "nlq_test.json", ann / LOOKED_AT)


def _split_stores(stores: Location, table: QueryTable) -> list[Location]:
    return sorted({store_path(stores, q.video_uid) for q in table})


def store_grid(stores: Iterable[Path]) -> TimeGrid:
    """The one time grid of ``stores``, which every checkpoint of the run records; stores on
    two different grids are refused with one line naming both."""
    grid = first = None
    for path in stores:
        g = FeatureStore.open(path).info.grid
        if grid is None:
            grid, first = g, path
        elif g != grid:
            raise GazeNLQError(f"{path}: time grid {g} differs from {first}'s {grid}; the "
                               "stores of a training run must share one time grid")
    if grid is None:
        raise GazeNLQError("no feature stores to train on")
    return grid


def data_grid(data: DataPaths, tables: Sequence[QueryTable | None]) -> TimeGrid:
    """The time grid shared by the stores of every split in ``tables``."""
    return store_grid(sorted({p for t in tables if t is not None
                              for p in _split_stores(data.stores, t)}))


def _check_grid(path: Path, grid: TimeGrid, what: str) -> None:
    """Refuse the checkpoint ``path`` (when present) if it records another time grid than
    ``grid`` (checkpoints from before grids were recorded pass)."""
    if not (path / "config.json").is_file():
        return
    conf = checkpoint.load_config(path)
    if checkpoint.TIME_GRID in conf and (old := checkpoint.time_grid(path, conf)) != grid:
        raise GazeNLQError(f"{path / 'config.json'}: {what} was trained on time grid {old}, "
                           f"but the stores are on {grid}; use stores of one grid")


def _recall_metrics(entries, table: QueryTable) -> dict[str, float]:
    res = evaluate(entries, table)
    out = {res.recall_name(k, t): v for (k, t), v in res.recall.items()}
    out["mIoU"] = res.miou
    return out


def gaze_map_metrics(estimator: GazeEstimator, windows: GazeWindows,
                     centre_bias: np.ndarray | None = None, batch: int = 32) -> dict[str, float]:
    """Mean KL and CC of predicted maps on fixation steps (and of the centre bias)."""
    estimator.eval()
    device = model_device(estimator)
    kls, ccs, base_kl, base_cc = [], [], [], []
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(windows, batch_size=batch):
            fix = b["fixation"].numpy()
            feats = b["feats"].to(device)
            pred = estimator.predict_maps(feats, torch.ones(feats.shape[:2], dtype=torch.bool,
                                                            device=device)).float().cpu()
            pred, gt = pred.numpy()[fix], b["maps"].numpy()[fix]
            if not len(gt):
                continue
            kls.append(kl_div(pred, gt))
            ccs.append(cc(pred, gt))
            if centre_bias is not None:
                bias = np.broadcast_to(centre_bias, gt.shape)
                base_kl.append(kl_div(bias, gt))
                base_cc.append(cc(bias, gt))
    out = {"kl": float(np.mean(np.concatenate(kls))), "cc": float(np.mean(np.concatenate(ccs)))}
    if centre_bias is not None:
        out["centre_bias_kl"] = float(np.mean(np.concatenate(base_kl)))
        out["centre_bias_cc"] = float(np.mean(np.concatenate(base_cc)))
    return out


def attention_metrics(pool: GazePool, windows: GazeWindows, batch: int = 32
                      ) -> dict[str, float]:
    """How close the pool's attention over the cells is to the gaze, on fixation steps: mean
    KL(P_gaze || A) and CC against the ground-truth maps pooled to the same grid, and the
    KL of a uniform attention for scale (``attn_uniform_kl``)."""
    pool.eval()
    device = model_device(pool)
    g = pool.cfg.grid
    kls, ccs, base = [], [], []
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(windows, batch_size=batch):
            fix = b["fixation"].numpy()
            a = pool.attention(b["feats"].to(device)).float().cpu().numpy()[fix]
            gt = cell_shares(b["maps"].flatten(2), g).numpy()[fix]
            if not len(gt):
                continue
            a, gt = a.reshape(-1, g, g), gt.reshape(-1, g, g)
            kls.append(kl_div(a, gt))
            ccs.append(cc(a, gt))
            base.append(kl_div(np.ones_like(gt), gt))
    if not kls:
        return {}
    return {"attn_kl": float(np.mean(np.concatenate(kls))),
            "attn_cc": float(np.nanmean(np.concatenate(ccs))),
            "attn_uniform_kl": float(np.mean(np.concatenate(base)))}


def mean_map(windows: GazeWindows) -> np.ndarray:
    """The centre-bias baseline: mean ground-truth map over tracked training steps."""
    total, n = 0.0, 0
    for b in torch.utils.data.DataLoader(windows, batch_size=32):
        valid = b["valid"].numpy()
        total = total + b["maps"].numpy()[valid].sum(axis=0)
        n += int(valid.sum())
    return total / max(n, 1)


def train_estimator(cfg: TrainConfig, data: DataPaths, out: Path, *, resume: bool,
                    quiet: bool, train_table: QueryTable, val_table: QueryTable,
                    grid: TimeGrid | None = None) -> Path:
    """Stage 1 on the eye-tracked training stores; returns the best checkpoint. Its
    checkpoints record ``grid`` (default: the train and val stores' one grid)."""
    train_s = _split_stores(data.stores, train_table)
    val_s = _split_stores(data.stores, val_table)
    grid = grid or store_grid(train_s + val_s)
    if resume:
        _check_grid(out / "stage1" / "last", grid, "the interrupted stage 1")
    train_w = GazeWindows(train_s, cfg.stage1_window)
    val_w = GazeWindows(val_s, cfg.stage1_window)
    if len(train_w) == 0 or len(val_w) == 0:
        raise GazeNLQError(f"{data.stores}: stage 1 needs stores with gaze maps in both the "
                           "train and val splits")
    torch.manual_seed(cfg.stage1.seed)  # initial weights follow the seed
    est = GazeEstimator(cfg.estimator)
    bias = mean_map(train_w)

    def step(model: GazeEstimator, batch: dict) -> dict[str, torch.Tensor]:
        return model.loss(batch["feats"], batch["maps"], batch["valid"])

    stage = trainer.Stage(
        name="stage1", model=est, optim=cfg.stage1, dataset=train_w, collate=None,
        step=step, validate=lambda m: gaze_map_metrics(m, val_w, bias), score="kl",
        higher_is_better=False, workers=cfg.workers, device=resolve_device(cfg.device),
        config={"kind": "estimator", "train_config": cfg.to_dict(),
                **checkpoint.grid_entry(grid)},
        items_per_batch=lambda b: int(b["valid"].numel()))
    trainer.run(stage, out / "stage1", resume=resume, quiet=quiet)
    return out / "stage1" / "best"


def grounding_step(model: GazeNLQ, batch: dict, norm: PositiveNormaliser,
                   nouns: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Stage-2 losses of one collated batch: one video pass per window, one grounding pass
    per query (``batch["clip_of"]`` maps queries to windows). Gaze tokens come from the
    batch when cached (frozen estimator), else from the estimator or the attention pool,
    whose attention regulariser (``gaze_pool``) joins the loss with weight
    ``cfg.gaze_reg_weight`` (logged as ``attn_kl`` at any weight). The semantic head, when
    the model has one, learns the batch's ``looked_at`` labels against ``nouns``, the
    vocabulary's noun embeddings."""
    gaze, attn = batch.get("gaze_tokens"), None
    if model.pool is not None:
        gaze, attn = model.pool(batch["gaze"], batch["mask"])
    elif gaze is None and model.estimator is not None:
        gaze = model.gaze_tokens(batch["gaze"], batch["mask"])
    v, g = model.grounding.embed_video(batch["video"], batch["mask"], gaze)
    idx = batch["clip_of"]
    cfg = model.cfg.grounding
    saliency = cfg.saliency_weight > 0
    mask = batch["mask"][idx]
    looked = model.looked_track(v, gaze, batch["mask"])
    out = model.grounding.ground_clips(v, g, batch["mask"], idx, batch["tokens"],
                                       batch["text_mask"], with_match=saliency,
                                       looked=None if looked is None else looked[idx])
    losses = grounding_loss(*out[:3], batch["answers"], cfg, norm,
                            match=out[3] if saliency else None, step_mask=mask)
    if attn is not None:
        kl = attention_kl(attn, batch["gaze_cells"], batch["has_gaze"] & batch["mask"],
                          model.cfg.pool.eps)
        losses["attn_kl"] = kl.detach()
        if model.cfg.gaze_reg_weight > 0:  # lambda 0: the regulariser adds no gradient
            losses["loss"] = losses["loss"] + model.cfg.gaze_reg_weight * kl
    if model.coarse is not None:  # on detached inputs: the grounding model is unaffected
        losses["coarse"] = coarse_loss(model.coarse, v, g, batch["mask"], batch["tokens"],
                                       batch["text_mask"], batch["answers"], idx)
        losses["loss"] = losses["loss"] + model.cfg.coarse.weight * losses["coarse"]
    if model.semantic is not None:  # likewise on detached inputs
        losses["looked_at"] = semantic_loss(model.semantic, v, gaze, batch["mask"],
                                            batch["looked_at"], nouns.to(v.device))
        losses["loss"] = losses["loss"] + model.cfg.semantic.weight * losses["looked_at"]
    return losses


def looked_at_labels(looked: LookedAt, items: list[ClipItem]) -> dict[Path, np.ndarray]:
    """Per store of ``items``, every step's looked-at object (``step_labels``)."""
    out = {}
    for item in items:
        if item.store not in out:
            store = FeatureStore.open(item.store)
            out[item.store] = step_labels(looked.spans(store.info.video_uid), store.info.grid,
                                          store.num_steps, len(looked.objects))
    return out


def noun_table(cfg: TrainConfig, names: Sequence[str]) -> torch.Tensor:
    """``[V, text_dim]`` noun embeddings of ``names`` with the frozen text encoder."""
    text = TextFeatures(list(names), build_text_encoder(cfg.text).eval(),
                        load_tokenizer(cfg.text))
    feats, mask = text.batch([text.index[n] for n in names])
    return noun_embedding(feats, mask)


def train_grounding(cfg: TrainConfig, data: DataPaths, out: Path, *, resume: bool, quiet: bool,
                    text: TextFeatures, train_table: QueryTable, val_table: QueryTable,
                    estimator_ckpt: Path | None, stop_after_epoch: int | None = None,
                    grid: TimeGrid | None = None) -> GazeNLQ:
    """Stage 2; returns the model with the best validation checkpoint's weights. Its
    checkpoints record ``grid`` (default: the train and val stores' one grid), which the
    stage-1 checkpoint must share."""
    grid = grid or data_grid(data, [train_table, val_table])
    if resume:
        _check_grid(out / "stage2" / "last", grid, "the interrupted stage 2")
    torch.manual_seed(cfg.stage2.seed)  # initial weights follow the seed
    model = GazeNLQ(cfg)
    if model.estimator is not None:
        if estimator_ckpt is None:
            raise GazeNLQError("the gaze variants need a stage-1 checkpoint")
        _check_grid(Path(estimator_ckpt), grid, "its stage-1 gaze estimator")
        model.estimator.load_state_dict(checkpoint.load_weights(estimator_ckpt))
    train_items = clip_items(train_table, data.stores)
    val_items = clip_items(val_table, data.stores)
    labels = nouns = None
    stage_config: dict = {}
    if model.semantic is not None:
        if data.looked_at is None or not Path(data.looked_at).is_file():
            raise GazeNLQError(f"{data.looked_at or 'the looked-at file'}: missing; the "
                               "semantic head learns from a looked-at file (gaze-synth "
                               "writes annotations/looked_at.json)")
        looked = read_looked_at(data.looked_at)
        labels = looked_at_labels(looked, train_items)
        if not any((v >= 0).any() for v in labels.values()):
            raise GazeNLQError(f"{data.looked_at}: labels none of the training steps; are "
                               "these the stores' video uids?")
        nouns = noun_table(cfg, looked.objects)
        stage_config["looked_at"] = {"objects": list(looked.objects)}
    tokens = None
    if model.estimator is not None and cfg.freeze_estimator:
        if distributed.is_main():  # under torchrun: built once, by rank 0
            GazeTokens.build(out / "gaze_tokens.zarr", model.estimator.to(
                resolve_device(cfg.device)), train_items + val_items,
                variant=cfg.grounding.gaze,
                multiple=cfg.grounding.length_multiple, quiet=quiet)
        distributed.barrier()
        tokens = GazeTokens(out / "gaze_tokens.zarr")
    dataset = GroundingDataset(train_items, text.index, max_len=cfg.train_max_len,
                               with_gaze=model.gaze_source is not None and tokens is None,
                               seed=cfg.stage2.seed, gaze_tokens=tokens,
                               gaze_grid=cfg.pool.grid if model.pool is not None else None,
                               looked_at=labels)
    norm = PositiveNormaliser()
    val_gaze = None
    if model.pool is not None:  # attention vs gaze on the eye-tracked val stores
        val_gaze = GazeWindows(_split_stores(data.stores, val_table), cfg.stage1_window)

    def step(m: GazeNLQ, batch: dict) -> dict[str, torch.Tensor]:
        return grounding_step(m, batch, norm, nouns)

    def validate(m: GazeNLQ) -> dict[str, float]:
        out = _recall_metrics(predict(m.grounding, m.gaze_source, val_items, text,
                                      gaze_tokens=tokens, semantic=m.semantic), val_table)
        if val_gaze is not None and len(val_gaze):
            out.update(attention_metrics(m.pool, val_gaze))
        return out

    stage = trainer.Stage(
        name=f"stage2-{cfg.grounding.gaze}", model=model, optim=cfg.stage2, dataset=dataset,
        collate=GroundingCollate(text, cfg.grounding.length_multiple), step=step,
        validate=validate, score="R1@0.3", higher_is_better=True, workers=cfg.workers,
        device=resolve_device(cfg.device),
        config={"kind": "gazenlq", "train_config": cfg.to_dict(),
                **checkpoint.grid_entry(grid), **stage_config},
        items_per_batch=lambda b: len(b["clip_of"]),
        extra_state=lambda: {"normaliser": norm.value},
        load_extra_state=lambda d: setattr(norm, "value", d["normaliser"]))
    trainer.run(stage, out / "stage2", resume=resume, quiet=quiet,
                stop_after_epoch=stop_after_epoch)
    model.load_state_dict(checkpoint.load_weights(out / "stage2" / "best"))
    return model.eval()


def load_text(cfg: TrainConfig, tables: list[QueryTable]) -> TextFeatures:
    encoder = build_text_encoder(cfg.text).eval()
    texts = [q.text for t in tables for q in t.with_text()]
    return TextFeatures(texts, encoder, load_tokenizer(cfg.text))


def _configure(cfg: TrainConfig, data: DataPaths, train_table: QueryTable, text_dim: int,
               variant: str, seed: int) -> TrainConfig:
    """``cfg`` with the stores' feature widths, the variant and the seed of both stages."""
    probe = FeatureStore.open(_split_stores(data.stores, train_table)[0])
    cfg = with_dims(cfg, video_dim=probe.dim("video_features"),
                    gaze_dim=probe.dim("gaze_features"), text_dim=text_dim, variant=variant)
    return replace(cfg, stage1=replace(cfg.stage1, seed=seed),
                   stage2=replace(cfg.stage2, seed=seed))


def _tables(data: DataPaths) -> tuple[QueryTable, QueryTable]:
    """The train and val query tables (both must have queries)."""
    train_table, val_table = load_queries(data.train), load_queries(data.val)
    for name, table in (("train", train_table), ("val", val_table)):
        if not table.with_text():
            raise GazeNLQError(f"{table.source}: the {name} split has no queries")
    return train_table, val_table


def train_stage1(cfg: TrainConfig, data: DataPaths, out: Path, *, variant: str, seed: int,
                 text_dim: int, resume: bool = False, quiet: bool = False) -> Path:
    """Stage 1 alone into ``out/stage1`` (for runs of ``variant`` that share it); returns
    the best checkpoint."""
    train_table, val_table = _tables(data)
    grid = data_grid(data, [train_table, val_table])
    cfg = _configure(cfg, data, train_table, text_dim, variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    return train_estimator(cfg, data, out, resume=resume, quiet=quiet,
                           train_table=train_table, val_table=val_table, grid=grid)


def train(cfg: TrainConfig, data: DataPaths, out: Path, *, variant: str, seed: int,
          resume: bool = False, quiet: bool = False, estimator_ckpt: Path | None = None,
          text: TextFeatures | None = None) -> dict:
    """Train one variant and seed; writes ``out/results.json`` (and the test split's
    predictions as an Ego4D NLQ submission, ``out/test_predictions.json``, for
    ``gaze-eval --by-template``) and returns the results. All stores of the run (every
    split) must share one time grid, which every checkpoint records."""
    train_table, val_table = _tables(data)
    test_table = load_queries(data.test) if data.test else None
    grid = data_grid(data, [train_table, val_table, test_table])
    if text is None:
        text = load_text(cfg, [t for t in (train_table, val_table, test_table) if t])
    cfg = _configure(cfg, data, train_table, text.dim, variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"variant": variant, "seed": seed}
    if variant not in ESTIMATOR_VARIANTS:
        estimator_ckpt = None  # 'none' and the pooling variants train no stage 1
    elif estimator_ckpt is None:
        estimator_ckpt = train_estimator(cfg, data, out, resume=resume, quiet=quiet,
                                         train_table=train_table, val_table=val_table,
                                         grid=grid)
    if estimator_ckpt is not None:
        results["stage1"] = checkpoint.load_config(estimator_ckpt)["metrics"]
    model = train_grounding(cfg, data, out, resume=resume, quiet=quiet, text=text,
                            train_table=train_table, val_table=val_table,
                            estimator_ckpt=estimator_ckpt, grid=grid)
    if not distributed.is_main():  # rank 0 evaluates and writes; the others read its results
        distributed.barrier()
        return json.loads((out / "results.json").read_text())
    results["val"] = checkpoint.load_config(out / "stage2" / "best")["metrics"]
    if test_table is not None and test_table.with_text():
        items = clip_items(test_table, data.stores)
        entries = predict(model.grounding, model.gaze_source, items, text,
                          semantic=model.semantic)
        write_submission(out / "test_predictions.json", entries)
        results["test"] = _recall_metrics(entries, test_table)
    results["parameters"] = sum(p.numel() for p in model.grounding.parameters())
    write_json_atomic(out / "results.json", results, indent=1)
    distributed.barrier()
    return results
