"""dualprompt: dual (text + visual) prompt learning on a frozen open_clip CLIP.

The core imports only torch, open_clip and safetensors; the training stack (Lightning, Hydra,
wandb; `pip install 'dualprompt[train]'`) lives in `dualprompt.training` and `dualprompt.cli`.
docs/architecture.md draws the layers.
"""
from .config import PromptConfig, SubcategoryQuery
from .losses import (category_loss, category_weights, contrastive_loss, feature_consistency,
                     gathered_contrastive_loss, gathered_sigmoid_loss, logit_consistency,
                     sigmoid_category_loss, sigmoid_loss)
from .model import DualPromptCLIP
from .prompt_file import PromptFileError, base_fingerprint
from .serve import load_prompts
from .reweighting import token_weights

__version__ = "0.1.0"

__all__ = [
    "DualPromptCLIP",
    "PromptConfig",
    "PromptFileError",
    "SubcategoryQuery",
    "base_fingerprint",
    "category_loss",
    "category_weights",
    "contrastive_loss",
    "feature_consistency",
    "gathered_contrastive_loss",
    "gathered_sigmoid_loss",
    "load_prompts",
    "logit_consistency",
    "sigmoid_category_loss",
    "sigmoid_loss",
    "token_weights",
]
