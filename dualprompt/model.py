"""`DualPromptCLIP`: a frozen open_clip CLIP with learned text and visual prompt vectors."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import open_clip

from . import towers
from .config import MLP_TARGETS, PromptConfig, SubcategoryQuery
from .prompt_file import save_prompts
from .prompts import (AttributePrompts, FeatureAdapter, LowRankAttention, SubcategoryPrompts,
                      TokenLoRA, VisualPrompts)
from .tokens import fit_to_window, length_groups

log = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], Tensor]


class DualPromptCLIP(nn.Module):
    """Wraps an open_clip model (kept frozen, in eval mode) with learned prompt vectors.

    Drop-in for the wrapped model: `encode_image`, `encode_text`, `forward`, `logit_scale`
    and `logit_bias` behave like open_clip's, so existing retrieval code keeps working.

    Args:
        clip: an open_clip `CLIP` or `CustomTextCLIP` with open_clip's own text tower (OpenAI
            CLIP, SigLIP / SigLIP2, EVA02, PE-Core, ...). Visual prompts and LoRA need a ViT
            image tower (open_clip's, or timm's ViT / EVA); any other tower (ResNet) takes
            text prompts and adapters only.
        config: what to learn; `PromptConfig()` by default.
        tokenizer: tokenizes `config.attribute_init`; open_clip's default tokenizer if None.
        trim_context: drop padding columns after the batch's longest caption where that is
            exact (a causal text tower pooled at the end token; a large saving on short
            captions). A bidirectional tower (SigLIP) always keeps its whole window.
        length_buckets: with `trim_context`, encode a batch's captions in this many groups of
            similar length, each trimmed to its own longest caption (exact, as above); 1: one
            group.
        train_backbone: also train every weight of the CLIP (full fine-tuning, a baseline);
            by default the CLIP is frozen. This is the one place that (un)freezes it.
    """

    def __init__(self, clip: nn.Module, config: Optional[PromptConfig] = None, *,
                 tokenizer: Optional[Tokenizer] = None, trim_context: bool = True,
                 length_buckets: int = 4, train_backbone: bool = False) -> None:
        super().__init__()
        tower = towers.text_tower(clip)  # NotImplementedError for towers it cannot prompt
        config = config if config is not None else PromptConfig()
        image_lora = config.lora_rank and "image" in config.lora_towers
        if (config.visual_length or image_lora) and not towers.takes_visual_prompts(clip):
            towers.vision_width(clip)  # raises, naming the image tower
        vision_layers = towers.vision_layers(clip) or 1
        config = config.for_model(tower.layers, vision_layers)
        config.check_model(tower.layers, vision_layers, clip.context_length)
        self.config = config
        self.trim_context = trim_context and tower.trims_exactly
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        self.length_buckets = length_buckets if self.trim_context else 1
        self.clip = clip
        clip.requires_grad_(train_backbone)
        clip.eval()  # dropout and patch dropout stay off, also when the backbone trains

        width = tower.width
        self.attribute = None
        if config.attribute_length:
            init = None
            if config.attribute_init is not None:
                init = _word_embeddings(tower.token_embedding, config.attribute_init,
                                        config.attribute_length, tokenizer or open_clip.tokenize)
            self.attribute = AttributePrompts(config.attribute_length, config.text_depth, width,
                                              config.init_std, init,
                                              classes=len(config.class_names))
        # class-specific vectors: each class name's token ids, to find it in a caption
        names = _class_name_tokens(config.class_names, tokenizer or open_clip.tokenize)
        self.register_buffer("class_tokens", names, persistent=False)  # (C, n_max), 0-padded
        self.subcategory = None
        self.query_layers = config.query_layers(tower.layers)
        if config.subcategory_length:
            key_dim = (width if config.subcategory_query == SubcategoryQuery.TOKENS
                       else towers.embed_dim(clip))
            self.subcategory = SubcategoryPrompts(
                config.subcategory_length, config.subcategory_pool_size, width, key_dim,
                config.subcategory_temperature, config.init_std)
        self.visual_prompts = None
        if config.visual_length:
            self.visual_prompts = VisualPrompts(
                config.visual_length, config.visual_depth, towers.vision_width(clip),
                config.init_std, coupled_from_width=width if config.coupled else None)
        dim = towers.embed_dim(clip)
        self.image_adapter = (FeatureAdapter(dim, config.adapter_reduction,
                                             config.image_adapter_ratio)
                              if config.image_adapter_ratio else None)
        self.text_adapter = (FeatureAdapter(dim, config.adapter_reduction,
                                            config.text_adapter_ratio)
                             if config.text_adapter_ratio else None)
        self.text_lora = self.image_lora = None
        mlp = bool(set(config.lora_targets) & set(MLP_TARGETS))
        if config.lora_rank and "text" in config.lora_towers:
            self.text_lora = LowRankAttention(
                tower.layers, width, config.lora_rank, config.lora_alpha, config.lora_targets,
                config.lora_dropout, mlp and towers.mlp_width(towers.text_blocks(clip)[0]))
        if config.lora_rank and "image" in config.lora_towers:
            self.image_lora = LowRankAttention(
                towers.vision_layers(clip), towers.vision_width(clip), config.lora_rank,
                config.lora_alpha, config.lora_targets, config.lora_dropout,
                mlp and towers.mlp_width(towers.vision_blocks(clip)[0]))
        self.token_lora = (TokenLoRA(tower.token_embedding.num_embeddings, width,
                                     config.token_lora_rank, config.token_lora_alpha)
                           if config.token_lora_rank else None)
        for side, lora, blocks in (("text", self.text_lora, towers.text_blocks),
                                   ("image", self.image_lora, towers.vision_blocks)):
            if (lora is not None and config.lora_dropout
                    and not all(map(towers.takes_low_rank_path, blocks(clip)))):
                log.warning("prompt.lora_dropout=%s is not applied on the %s tower: its blocks "
                            "(%s) run LoRA as merged weights", config.lora_dropout, side,
                            type(blocks(clip)[0]).__name__)
        # how the towers run LoRA: a low-rank path while it trains, merged weights kept otherwise
        self._text_lora_weights = towers.LoRAWeights()
        self._image_lora_weights = towers.LoRAWeights()
        log.info("DualPromptCLIP: %d trainable parameters (%s)", self.num_trainable_parameters(),
                 config.to_json())

    # -- open_clip interface -------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> Optional[nn.Parameter]:
        return self.clip.logit_bias

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def train(self, mode: bool = True) -> "DualPromptCLIP":
        super().train(mode)
        self.clip.eval()  # the backbone stays in eval mode (dropout, patch dropout off)
        return self

    def encode_text(self, text: Tensor, normalize: bool = False,
                    token_weights: Optional[Tensor] = None,
                    query: Optional[Tensor] = None) -> Tensor:
        """text: (B, L) token ids from `open_clip.get_tokenizer`. Returns (B, D).

        token_weights: optional (B, L) per-token scale of the caption's token embeddings
        (training-time dynamic re-weighting, see `dualprompt.reweighting`); None at inference.
        query: optional (B, Dq) `text_query(text)`, to reuse it; computed here if None.
        """
        features = self._by_length(self._encode_text, text, token_weights, query)
        if self.text_adapter is not None:
            features = self.text_adapter(features)
        return F.normalize(features, dim=-1) if normalize else features

    def _encode_text(self, text: Tensor, token_weights: Optional[Tensor],
                     query: Optional[Tensor]) -> Tensor:
        tower, n_prompt = towers.text_tower(self.clip), self.config.text_length
        eot = towers.end_index(tower, text)
        if query is None and self.subcategory is not None and tower.pool_type == "last":
            query = self.subcategory_query(text, eot)  # on the whole window (`text_query`)
        tokens, eot, _ = fit_to_window(text, eot, n_prompt, trim=self.trim_context)
        x = tower.token_embedding(tokens)  # (B, L', W)
        if self.token_lora is not None:
            x = x + self.token_lora(tokens).to(x.dtype)
        if token_weights is not None:
            w = token_weights[:, :tokens.shape[1]].to(x.dtype)
            w = w.scatter(1, eot[:, None], 1.0)  # the (possibly moved) end token stays at 1
            x = x * w.unsqueeze(-1)
        prompts, deep = self._text_prompts(tokens, eot, query)
        if prompts is not None:
            x = torch.cat([x[:, :1], prompts.to(x.dtype), x[:, 1:]], dim=1)  # (B, L'+n, W)
        lora = (self._text_lora_weights(self.text_lora, towers.text_blocks(self.clip))
                if self.text_lora is not None else None)
        pooled = towers.text_hidden(tower, x, deep, prompt_start=1, block_weights=lora,
                                    at=eot + n_prompt)
        return towers.project(tower, pooled)  # (B, D)

    def _by_length(self, fn: Callable[..., Tensor], text: Tensor,
                   *rows: Optional[Tensor]) -> Tensor:
        """fn(text, *rows) -> (B, ...), run on `length_buckets` groups of similar length
        (rows of `text` and of each non-None tensor in `rows` go together), rows back in order."""
        if self.length_buckets == 1 or text.shape[0] < 2:
            return fn(text, *rows)
        groups = length_groups(towers.end_index(towers.text_tower(self.clip), text),
                               self.length_buckets)
        out = torch.cat([fn(text[g], *(None if r is None else r[g] for r in rows))
                         for g in groups])
        return out[torch.argsort(torch.cat(groups))]

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        """image: (B, 3, H, W) preprocessed as for the wrapped CLIP. Returns (B, D)."""
        prompts: list[Tensor] = []
        if self.visual_prompts is not None:
            text_vectors = self.attribute() if self.config.coupled else None
            prompts = self.visual_prompts(text_vectors)
        lora = (self._image_lora_weights(self.image_lora, towers.vision_blocks(self.clip))
                if self.image_lora is not None else None)
        features = towers.encode_image(self.clip.visual, image, prompts, block_weights=lora)
        if self.image_adapter is not None:
            features = self.image_adapter(features)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[Tensor] = None, text: Optional[Tensor] = None):
        """Like open_clip `CLIP.forward`: normalised features and `logit_scale.exp()`."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if getattr(self.clip, "output_dict", False):
            out = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    # -- prompts ---------------------------------------------------------------------------
    def _text_prompts(self, tokens: Tensor, eot: Tensor, query: Optional[Tensor] = None
                      ) -> tuple[Optional[Tensor], list[Tensor]]:
        """(B, L') fitted token ids -> (B, n, W) input-layer text prompts (or None) and the
        deep attribute vectors of layers 2..J, each (k, W) or, class-specific, (B, k, W).
        query: (B, Dq) the pool query if already known."""
        parts, deep = [], []
        if self.attribute is not None:
            if self.attribute.class_specific:
                vectors = self.attribute(self.caption_classes(tokens))  # (B, J, k, W)
                parts.append(vectors[:, 0])
                deep = list(vectors[:, 1:].unbind(1))
            else:
                vectors = self.attribute()  # (J, k, W)
                parts.append(vectors[0].unsqueeze(0).expand(tokens.shape[0], -1, -1))
                deep = list(vectors[1:])
        if self.subcategory is not None:
            if query is None:
                query = self.subcategory_query(tokens, eot)
            parts.append(self.subcategory(query))
        return (torch.cat(parts, dim=1) if parts else None), deep

    @torch.no_grad()
    def caption_classes(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B,) index into `config.class_names` of the class each caption
        names (the longest matching name wins; ties: the first), -1 where it names none."""
        found = torch.full((tokens.shape[0],), -1, dtype=torch.long, device=tokens.device)
        lengths = (self.class_tokens > 0).sum(1)
        for n in sorted({int(v) for v in lengths}, reverse=True):
            if not 0 < n <= tokens.shape[1]:
                continue
            ids = (lengths == n).nonzero(as_tuple=True)[0]
            names = self.class_tokens[ids, :n]  # (Cn, n)
            windows = tokens.unfold(1, n, 1)  # (B, L-n+1, n)
            hit = (windows[:, :, None, :] == names[None, None]).all(-1).any(1)  # (B, Cn)
            first = torch.where(hit.any(1), ids[hit.int().argmax(1)], -1)
            found = torch.where(found < 0, first, found)
        return found

    @torch.no_grad()
    def text_query(self, text: Tensor, token_features: Optional[Tensor] = None
                   ) -> Optional[Tensor]:
        """The pool query of each caption, from (B, L) token ids: (B, Dq); None without a pool.

        token_features: (B, L'', D) frozen per-position features of `text`
        (`reweighting.frozen_token_features`): a FEATURE query is read from them at the end
        token instead of running the frozen text tower again (unless a caption is cut to fit
        the prompts, which changes its tokens, or the query reads out after fewer layers).
        A tower pooled at the window's last position (SigLIP) is queried on the caption's
        whole window, as open_clip encodes it: cutting the window would move its pooled token.
        """
        if self.subcategory is None:
            return None
        tower = towers.text_tower(self.clip)
        eot = towers.end_index(tower, text)
        whole = tower.pool_type == "last"
        if (token_features is not None
                and self.config.subcategory_query == SubcategoryQuery.FEATURE
                and self.query_layers == tower.layers
                and (whole or bool((eot < text.shape[1] - self.config.text_length).all()))):
            return token_features[torch.arange(text.shape[0], device=text.device), eot]
        if whole:
            return self.subcategory_query(text, eot)

        def query(text: Tensor) -> Tensor:
            eot = towers.end_index(tower, text)
            tokens, eot, _ = fit_to_window(text, eot, self.config.text_length,
                                           trim=self.trim_context)
            return self.subcategory_query(tokens, eot)
        return self._by_length(query, text)

    @torch.no_grad()
    def subcategory_query(self, tokens: Tensor, eot: Tensor) -> Tensor:
        """The frozen, label-free description of each caption that keys the prompt pool.

        tokens: (B, L'), eot: (B,). Returns (B, Dq).
        """
        if self.config.subcategory_query == SubcategoryQuery.FEATURE:
            return towers.text_features(self.clip, tokens, end=eot, layers=self.query_layers)
        tower = towers.text_tower(self.clip)
        content = towers.content_mask(tower, tokens, eot)  # (B, L')
        emb = tower.token_embedding(tokens) * content.unsqueeze(-1)
        return emb.sum(1) / content.sum(1, keepdim=True).clamp(min=1)

    def prompt_state_dict(self) -> dict[str, Tensor]:
        """The learned tensors only (what a prompt file and a checkpoint hold)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save_prompts(self, path: Union[str, Path]) -> Path:
        """Write the learned tensors, the config and the base-model fingerprint (safetensors)."""
        return save_prompts(self, path)


def _content_ids(tokenizer: Tokenizer, text: str) -> Tensor:
    """The token ids of `text` as they read inside a caption: without the tokenizer's own
    start / end / padding ids (those it writes for an empty text), whatever the tokenizer."""
    special = set(tokenizer([""])[0].tolist())
    ids = tokenizer([text])[0]
    return ids[torch.tensor([int(i) not in special for i in ids], dtype=torch.bool)]


def _class_name_tokens(class_names: list[str], tokenizer: Tokenizer) -> Tensor:
    """(C, n_max) token ids of each class name as it reads in a caption (underscores as
    spaces), without start/end tokens, zero-padded; (0, 1) for no classes."""
    rows = [_content_ids(tokenizer, name.replace("_", " ")) for name in class_names]
    if not rows:
        return torch.zeros(0, 1, dtype=torch.long)
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _word_embeddings(embedding: nn.Embedding, words: str, length: int,
                     tokenizer: Tokenizer) -> Tensor:
    """Token embeddings of `words` without start/end tokens: (n, W), n <= length.

    Words longer than `length` tokens are cut to their first `length` tokens (as MaPLe does
    with "a photo of a" for 2 vectors), so sweeping the length keeps working."""
    ids = _content_ids(tokenizer, words)
    if len(ids) > length:
        log.info("attribute_init %r is %d tokens: its first %d initialise the %d vectors",
                 words, len(ids), length, length)
        ids = ids[:length]
    if not len(ids):
        raise ValueError(f"PromptConfig.attribute_init {words!r}: the tokenizer gives no tokens")
    if int(ids.max()) >= embedding.num_embeddings:
        raise ValueError(f"PromptConfig.attribute_init {words!r}: the tokenizer's ids exceed the "
                         f"model's vocabulary ({embedding.num_embeddings}); pass the "
                         "model's own tokenizer")
    with torch.no_grad():
        return embedding(ids.to(embedding.weight.device)).float().cpu()
