"""The world's images as the CLIP sees them: uint8 arrays -> normalised tensors."""
from __future__ import annotations

import numpy as np
import torch

# open_clip's default normalisation (OpenAI CLIP); both loading paths then preprocess alike.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> normalised float tensor (B, 3, H, W), as open_clip's val
    transform."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std
