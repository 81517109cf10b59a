"""`PromptRetrievalModule`: trains the prompts of a `DualPromptCLIP` with Lightning."""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import towers
from ..data.datasets import GalleryBatch, TrainBatch
from ..losses import (category_loss, category_weights, contrastive_loss, feature_consistency,
                      gathered_contrastive_loss, gathered_sigmoid_loss, logit_consistency,
                      sigmoid_category_loss, sigmoid_loss)
from ..metrics import summarize_domains
from ..reweighting import blank_image_features, frozen_token_features, token_weights
from ..schedule import warmup_cosine
from ..tokens import fit_to_window
from .retrieval_metric import RetrievalRecall
from .schema import LossConfig, LossKind, OptimConfig

log = logging.getLogger(__name__)


class PromptRetrievalModule(L.LightningModule):
    """Loss `L_con + lambda * L_cate` with optional token re-weighting; Recall@K per domain.

    model: a `DualPromptCLIP`, or any open_clip-like model for evaluation only (zero-shot).
    Checkpoints hold the learned tensors only (plus optimizer and scheduler state).
    share_frozen_text: with re-weighting, one frozen text pass over the positives serves the
        token weights and the prompt-pool query of both positive passes (exact).
    cache_blank_image: compute the blank-image features of the re-weighting once, while the
        CLIP is frozen (exact).
    cache_frozen: keep each training caption's token weights and prompt-pool query, the
        pool query (and with `reweight_negatives` the token weights) of each of its
        negatives, and the frozen caption and image features of the
        consistency terms, functions of the frozen CLIP and the (un-augmented) image and
        caption only, after their first computation: later epochs skip the frozen text and
        image passes (exact to float rounding: a batch's padding
        differs from epoch to epoch). The prompt-pool query of each validation caption is
        kept too, so each validation epoch after the first skips its frozen text pass.
    """

    def __init__(self, model: nn.Module, *, loss: Optional[LossConfig] = None,
                 optim: Optional[OptimConfig] = None, val_domains: Sequence[str] = (),
                 test_domains: Sequence[str] = (), share_frozen_text: bool = True,
                 cache_blank_image: bool = True, cache_frozen: bool = True) -> None:
        super().__init__()
        self.model = model
        self.share_frozen_text, self.cache_blank_image = share_frozen_text, cache_blank_image
        self._blank_features: Optional[Tensor] = None
        self.cache_frozen = cache_frozen
        self._frozen_cache: dict[tuple[int, int], tuple[Tensor, Optional[Tensor]]] = {}
        self._negative_queries: dict[tuple[int, int], Tensor] = {}  # (image, negative) -> query
        # (image, negative) -> its token weights and query (`LossConfig.reweight_negatives`)
        self._negative_frozen: dict[tuple[int, int], tuple[Tensor, Optional[Tensor]]] = {}
        # (image, caption) -> the frozen CLIP's caption and image features (consistency terms)
        self._consistency_cache: dict[tuple[int, int], tuple[Optional[Tensor], ...]] = {}
        # (validation loader, text id) -> the caption's prompt-pool query
        self._val_queries: dict[tuple[int, int], Tensor] = {}
        self.loss_cfg = loss or LossConfig()
        self.optim_cfg = optim or OptimConfig()
        self.val_domains, self.test_domains = list(val_domains), list(test_domains)
        self.val_metrics = nn.ModuleList(RetrievalRecall() for _ in self.val_domains)
        self.test_metrics = nn.ModuleList(RetrievalRecall() for _ in self.test_domains)
        self.strict_loading = False  # checkpoints carry the learned tensors only
        self.test_results: dict[str, dict[str, float]] = {}
        self.val_results: dict[str, dict[str, float]] = {}
        self.sigmoid = self._uses_sigmoid(model)

    # -- training ------------------------------------------------------------------------
    def _uses_sigmoid(self, model: nn.Module) -> bool:
        """Whether the losses take SigLIP's sigmoid form (`LossConfig.kind`)."""
        kind, bias = LossKind(self.loss_cfg.kind), getattr(model, "logit_bias", None)
        if kind == LossKind.sigmoid and bias is None:
            raise ValueError(f"loss.kind=sigmoid needs a model with a logit bias (SigLIP); "
                             f"{type(getattr(model, 'clip', model)).__name__} has none: use "
                             "loss.kind=infonce or auto")
        return kind == LossKind.sigmoid or (kind == LossKind.auto and bias is not None)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        model, cfg = self.model, self.loss_cfg
        images, tokens = batch.image, batch.tokens
        image_features = model.encode_image(images, normalize=True)  # (B, D)
        weights = query = frozen_image = None
        if cfg.reweighting:
            weights, query, frozen_image = self._frozen_weights_and_query(batch, image_features)
        text_features = model.encode_text(tokens, normalize=True, token_weights=weights,
                                          query=query)
        scale = model.logit_scale.exp().float()
        total = torch.zeros((), device=images.device)
        if cfg.contrastive:
            loss_con = self._contrastive(image_features, text_features, scale)
            self.log("train/loss_con", loss_con)
            total = total + loss_con
        if (cfg.category_negatives and cfg.category_weight > 0
                and bool(batch.negative_mask.any())):
            # positives and negatives must be weighted alike, or the prompts could separate
            # them by the weighting instead of by the content: with re-weighting on, either
            # the negatives are weighted by their image too (`reweight_negatives`) or the
            # positive is re-encoded unweighted beside them (in one pass)
            if weights is None or cfg.reweight_negatives:
                loss_cate = self._category_loss(
                    batch, image_features, text_features, scale,
                    weighted=weights is not None, frozen_image=frozen_image)
            else:
                loss_cate = self._category_loss(batch, image_features, text_features, scale,
                                                positive_tokens=batch.tokens,
                                                positive_query=query)
            self.log("train/loss_cate", loss_cate)
            total = total + cfg.category_weight * loss_cate
        total = total + self._consistency(batch, image_features, text_features, scale)
        if not total.requires_grad:
            raise RuntimeError("no loss term is switched on (loss.contrastive=false and no "
                               "negatives / loss.category_negatives=false)")
        if not torch.isfinite(total.detach()):
            raise FloatingPointError(self._non_finite_message(total))
        self.log("train/loss", total, prog_bar=True)
        return total

    def _frozen_weights_and_query(self, batch: TrainBatch, image_features: Tensor
                                  ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """The positives' token weights (B, L) and prompt-pool queries (B, Dq) or None, from
        the cache when every row is there (see `cache_frozen`); and the frozen CLIP's (B, D)
        image features when they were computed for them (None from the cache)."""
        model, tokens = self.model, batch.tokens
        keys = self._cache_keys(batch)
        if keys is not None and all(k in self._frozen_cache for k in keys):
            return (*_stack_cached([self._frozen_cache[k] for k in keys]), None)
        frozen = self._frozen_image(batch, image_features)
        shared = frozen_token_features(model.clip, tokens) if self.share_frozen_text else None
        weights = token_weights(model.clip, tokens, image_features=frozen,
                                strength=self.loss_cfg.reweighting_strength,
                                blank_features=self._blank(), token_features=shared)
        query = model.text_query(tokens, shared) if shared is not None else None
        if keys is not None:
            for row, key in enumerate(keys):
                self._frozen_cache[key] = (weights[row].detach(),
                                           None if query is None else query[row].detach())
        return weights, query, frozen

    @torch.no_grad()
    def _frozen_image(self, batch: TrainBatch, image_features: Tensor) -> Tensor:
        """The frozen CLIP's (B, D) features of the batch's images: the prompted ones when
        nothing changes the image tower."""
        model = self.model
        if (model.visual_prompts is None and model.image_adapter is None
                and model.image_lora is None):
            return image_features.detach()
        return model.clip.encode_image(batch.image)

    def _cache_keys(self, batch: TrainBatch) -> Optional[list[tuple[int, int]]]:
        """(image index, caption index) of each row, or None when nothing may be cached: the
        CLIP trains, or the batch does not say which images it holds."""
        if (not self.cache_frozen or batch.index is None or batch.caption is None
                or self._clip_trains()):
            return None
        return list(zip(batch.index.tolist(), batch.caption.tolist()))

    def _consistency(self, batch: TrainBatch, image_features: Tensor, text_features: Tensor,
                     scale: Tensor) -> Tensor:
        """Weighted distances to the frozen CLIP (KgCoOp / PromptSRC terms); 0 when all off."""
        cfg = self.loss_cfg
        total = torch.zeros((), device=image_features.device)
        need_text = cfg.text_consistency > 0 or cfg.logit_consistency > 0
        need_image = cfg.image_consistency > 0 or cfg.logit_consistency > 0
        if not (need_text or need_image):
            return total
        frozen_text, frozen_image = self._frozen_features(batch, need_text, need_image)
        distance = str(cfg.consistency_distance)
        if cfg.text_consistency > 0:
            term = feature_consistency(text_features, frozen_text, distance)
            self.log("train/loss_text_consistency", term)
            total = total + cfg.text_consistency * term
        if cfg.image_consistency > 0:
            term = feature_consistency(image_features, frozen_image, distance)
            self.log("train/loss_image_consistency", term)
            total = total + cfg.image_consistency * term
        if cfg.logit_consistency > 0:
            term = logit_consistency(scale * image_features.float() @ text_features.float().t(),
                                     scale * frozen_image.float() @ frozen_text.float().t())
            self.log("train/loss_logit_consistency", term)
            total = total + cfg.logit_consistency * term
        return total

    def _frozen_features(self, batch: TrainBatch, need_text: bool, need_image: bool
                         ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The frozen CLIP's normalised (B, D) caption and image features of the batch, from
        the cache when every row is there (see `cache_frozen`)."""
        keys = self._cache_keys(batch)
        if keys is not None and all(k in self._consistency_cache for k in keys):
            rows = [self._consistency_cache[k] for k in keys]
            return tuple(None if rows[0][i] is None else torch.stack([r[i] for r in rows])
                         for i in (0, 1))
        clip = self.model.clip
        with torch.no_grad():
            text = (F.normalize(_plain_text_features(clip, batch.tokens), dim=-1)
                    if need_text else None)
            image = (F.normalize(towers.encode_image(clip.visual, batch.image), dim=-1)
                     if need_image else None)
        if keys is not None:
            for row, key in enumerate(keys):
                self._consistency_cache[key] = (None if text is None else text[row],
                                                None if image is None else image[row])
        return text, image

    def _clip_trains(self) -> bool:
        """Full fine-tuning: nothing computed from the CLIP may be kept across steps."""
        return any(p.requires_grad for p in self.model.clip.parameters())

    def _blank(self) -> Optional[Tensor]:
        """The re-weighting's blank-image features, computed once while the CLIP is frozen
        (None: `token_weights` computes them)."""
        clip = self.model.clip
        if not self.cache_blank_image or self._clip_trains():
            return None
        if self._blank_features is None or self._blank_features.device != self.device:
            self._blank_features = blank_image_features(clip)
        return self._blank_features

    def _non_finite_message(self, total: Tensor) -> str:
        paths = ([p for cb in self.trainer.checkpoint_callbacks
                  for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))]
                 if self._trainer is not None else [])
        last = [p for p in paths if p and p.endswith("last.ckpt")] or [p for p in paths if p]
        where = (f"epoch {self.current_epoch}, step {self.global_step}"
                 if self._trainer is not None else "this step")
        return (f"training loss is {total.item()} at {where}; stopped before the optimizer "
                f"step. Last good checkpoint: {last[0] if last else 'none yet'}. Try a lower "
                "optim.lr or trainer.precision=32-true.")

    def _contrastive(self, image_features: Tensor, text_features: Tensor,
                     scale: Tensor) -> Tensor:
        """In-batch InfoNCE or sigmoid loss; under DDP over the global batch (features
        gathered with grads). Category-aware negatives stay local: they only compare an image
        with its own."""
        world = self.trainer.world_size if self._trainer is not None else 1
        bias = self.model.logit_bias if self.sigmoid else None
        if world == 1:
            if self.sigmoid:
                return sigmoid_loss(image_features, text_features, scale, bias)
            return contrastive_loss(image_features, text_features, scale)
        all_texts = self.all_gather(text_features, sync_grads=True).flatten(0, 1)
        offset = self.trainer.global_rank * image_features.shape[0]
        if self.sigmoid:
            return gathered_sigmoid_loss(image_features, all_texts, scale, bias, offset)
        all_images = self.all_gather(image_features, sync_grads=True).flatten(0, 1)
        return gathered_contrastive_loss(image_features, text_features, all_images, all_texts,
                                         scale, offset)

    def _category_loss(self, batch: TrainBatch, image_features: Tensor,
                       text_features: Tensor, scale: Tensor,
                       positive_tokens: Optional[Tensor] = None,
                       positive_query: Optional[Tensor] = None, weighted: bool = False,
                       frozen_image: Optional[Tensor] = None) -> Tensor:
        """L_cate of `text_features` (or of `positive_tokens`, encoded here beside the
        negatives) against the batch's negatives, re-weighted by their image if `weighted`."""
        mask = batch.negative_mask  # (B, K)
        b, k, _ = batch.negative_tokens.shape
        tokens = batch.negative_tokens[mask]
        query = weights = None
        if weighted:
            weights, query = self._negative_weights_and_query(batch, tokens, image_features,
                                                              frozen_image)
        elif positive_tokens is not None and positive_query is not None:
            query = torch.cat([positive_query, self._negative_query(batch, tokens)])
        if positive_tokens is not None:
            tokens = torch.cat([positive_tokens, tokens])
        encoded = self.model.encode_text(tokens, normalize=True, token_weights=weights,
                                         query=query)
        if positive_tokens is not None:
            text_features, encoded = encoded[:b], encoded[b:]
        negatives = encoded.new_zeros(b, k, encoded.shape[-1])
        negatives[mask] = encoded  # (B, K, D); padding rows are masked out of the loss
        weights = category_weights(batch.negative_categories, batch.category,
                                   self.loss_cfg.alpha)
        weights = weights.masked_fill(batch.negative_categories < 0, 1.0)
        if self.sigmoid:
            return sigmoid_category_loss(image_features, text_features, negatives, scale,
                                         self.model.logit_bias, weights, mask)
        return category_loss(image_features, text_features, negatives, scale, weights, mask)

    def _negative_query(self, batch: TrainBatch, tokens: Tensor) -> Tensor:
        """The pool queries of the batch's negatives (`tokens`: those under the mask, in
        order), from the cache when every one is there."""
        return self._cached_query(self._negative_queries, self._negative_keys(batch), tokens)

    def _cached_query(self, cache: dict[tuple[int, int], Tensor],
                      keys: Optional[list[tuple[int, int]]], tokens: Tensor) -> Tensor:
        """The pool queries of `tokens`, one per key: from `cache` when every key is there,
        else computed and kept under `keys` (None: nothing is kept)."""
        if keys is not None and all(k in cache for k in keys):
            return torch.stack([cache[k] for k in keys])
        query = self.model.text_query(tokens)
        if keys is not None:
            cache.update(zip(keys, query.detach()))
        return query

    def _negative_weights_and_query(self, batch: TrainBatch, tokens: Tensor,
                                    image_features: Tensor, frozen_image: Optional[Tensor]
                                    ) -> tuple[Tensor, Optional[Tensor]]:
        """The token weights (N, L) of the batch's negatives (`tokens`: those under the mask,
        in order), each against its own image, and their pool queries (N, Dq) or None, from
        the cache when every one is there."""
        keys = self._negative_keys(batch)
        if keys is not None and all(k in self._negative_frozen for k in keys):
            return _stack_cached([self._negative_frozen[k] for k in keys])
        rows = batch.negative_mask.nonzero(as_tuple=True)[0]
        if frozen_image is None:
            frozen_image = self._frozen_image(batch, image_features)
        model = self.model
        shared = frozen_token_features(model.clip, tokens) if self.share_frozen_text else None
        weights = token_weights(model.clip, tokens, image_features=frozen_image[rows],
                                strength=self.loss_cfg.reweighting_strength,
                                blank_features=self._blank(), token_features=shared)
        query = model.text_query(tokens, shared)
        if keys is not None:
            self._negative_frozen.update(
                (key, (weights[i].detach(), None if query is None else query[i].detach()))
                for i, key in enumerate(keys))
        return weights, query

    def _negative_keys(self, batch: TrainBatch) -> Optional[list[tuple[int, int]]]:
        """(image index, negative position) of each negative under the mask, in order, or None
        when nothing may be cached (`_cache_keys`). A record's negatives are fixed, so these
        key them."""
        if self._cache_keys(batch) is None:
            return None
        rows, cols = batch.negative_mask.nonzero(as_tuple=True)
        return list(zip(batch.index[rows].tolist(), cols.tolist()))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("the model has no trainable parameters (all prompt lengths 0?)")
        cfg = self.optim_cfg
        params = self._param_groups(params)
        if cfg.name == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        elif cfg.name == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                    weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"optim.name must be sgd or adamw, got {cfg.name!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            return warmup_cosine(step, total_steps=total, warmup_steps=cfg.warmup_steps,
                                 base_lr=cfg.lr, warmup_lr=cfg.warmup_lr,
                                 min_lr=cfg.min_lr) / cfg.lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _param_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """One group at `optim.lr`, and the LoRA tensors (the towers' and the token
        embedding's) in their own at `optim.lr` x `optim.lora_lr_scale` when that is not 1:
        low-rank updates of the frozen weights want a higher lr than prompt vectors (tuned on
        validation, CLIP-LoRA chose 3x the prompts' lr: benchmarks/results/quality_tuned.md).
        The scheduler gives both groups the same warm-up and cosine factor."""
        scale = self.optim_cfg.lora_lr_scale
        if not scale > 0:
            raise ValueError(f"optim.lora_lr_scale must be > 0, got {scale}")
        lora = {id(p) for m in (getattr(self.model, "text_lora", None),
                                getattr(self.model, "image_lora", None),
                                getattr(self.model, "token_lora", None)) if m is not None
                for p in m.parameters() if p.requires_grad}
        if scale == 1.0 or not lora:
            return [{"params": params}]
        return [{"params": [p for p in params if id(p) not in lora]},
                {"params": [p for p in params if id(p) in lora],
                 "lr": self.optim_cfg.lr * scale}]

    def on_fit_start(self) -> None:
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        log.info("training %d prompt parameters; %d frozen CLIP parameters", n, frozen)
        if self.sigmoid and self.loss_cfg.kind == LossKind.auto:
            log.info("loss.kind=auto: the model has a logit bias, so it trains with SigLIP's "
                     "sigmoid loss (loss.kind=infonce to override)")

    # -- evaluation ----------------------------------------------------------------------
    def _embed(self, batch: GalleryBatch, metric: RetrievalRecall,
               query: Optional[Tensor] = None) -> None:
        image_features = self.model.encode_image(batch.image, normalize=True)
        if query is None:
            text_features = self.model.encode_text(batch.tokens, normalize=True)
        else:
            text_features = self.model.encode_text(batch.tokens, normalize=True, query=query)
        metric.update(image_features.float(), batch.image_ids, text_features.float(),
                      batch.text_ids, batch.text_image_ids)

    def validation_step(self, batch: GalleryBatch, batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._embed(batch, self.val_metrics[dataloader_idx],
                    self._validation_query(batch, dataloader_idx))

    def _validation_query(self, batch: GalleryBatch, dataloader_idx: int) -> Optional[Tensor]:
        """The (M, Dq) prompt-pool queries of a validation batch's captions, kept by text id
        while the CLIP is frozen (`cache_frozen`); None: `encode_text` computes them."""
        if (not self.cache_frozen or getattr(self.model, "subcategory", None) is None
                or self._clip_trains()):
            return None
        keys = [(dataloader_idx, i) for i in batch.text_ids.tolist()]
        return self._cached_query(self._val_queries, keys, batch.tokens)

    def test_step(self, batch: GalleryBatch, batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._embed(batch, self.test_metrics[dataloader_idx])

    def _finish(self, stage: str, domains: list[str], metrics: nn.ModuleList) -> dict:
        per_domain = {}
        for name, metric in zip(domains, metrics):
            per_domain[name] = metric.compute()
            metric.reset()
        results = summarize_domains(per_domain) if per_domain else {}
        for domain, values in results.items():
            for key, value in values.items():
                # values are already global (the metric gathers every rank's embeddings);
                # sync_dist only averages identical numbers and keeps Lightning quiet
                self.log(f"{stage}/{domain}/{key}", value, add_dataloader_idx=False,
                         prog_bar=domain == "AVG" and key == "rsum", sync_dist=True)
        return results

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for metric in self.val_metrics:
                metric.reset()
            return
        self.val_results = self._finish("val", self.val_domains, self.val_metrics)
        avg = self.val_results.get("AVG", {})
        if avg and self.trainer.state.fn == "fit":  # one line per training epoch
            log.info("epoch %d: val i2t R@1 %.2f  t2i R@1 %.2f  rsum %.2f", self.current_epoch,
                     avg["i2t_R@1"], avg["t2i_R@1"], avg["rsum"])

    def on_test_epoch_end(self) -> None:
        self.test_results = self._finish("test", self.test_domains, self.test_metrics)

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        learned = {f"model.{k}" for k, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in learned}
        config = getattr(self.model, "config", None)
        if config is not None:
            checkpoint["dualprompt_prompt_config"] = config.to_dict()


def _stack_cached(rows: list[tuple[Tensor, Optional[Tensor]]]
                  ) -> tuple[Tensor, Optional[Tensor]]:
    """Cached per-row (token weights, pool query or None) -> (N, L) weights, (N, Dq) or None."""
    query = None if rows[0][1] is None else torch.stack([q for _, q in rows])
    return torch.stack([w for w, _ in rows]), query


def _plain_text_features(clip: nn.Module, tokens: Tensor) -> Tensor:
    """The frozen CLIP's (B, D) caption features, on the batch's shortest window (exact under
    the causal text mask; the full 77-token context would be several times the work)."""
    tower = towers.text_tower(clip)
    eot = towers.end_index(tower, tokens)
    fitted, eot, _ = fit_to_window(tokens, eot, 0, trim=tower.trims_exactly)
    return towers.text_features(clip, fitted, end=eot)
