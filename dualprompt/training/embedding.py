"""The Lightning side of `python -m dualprompt.embed`: a predict module that gathers
embeddings across ranks in a fixed order, and the files it writes (NumPy, ids, FAISS)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EmbedModule(L.LightningModule):
    """L2-normalised embeddings of every predict dataloader (one per kind, in `kinds` order).

    After `Trainer.predict`, `features[kind]` holds (N, D) float32 on the CPU of every rank,
    rows ordered by dataset index whatever the number of processes (ranks are gathered and
    sorted by index). Every rank holds the whole gathered array: N * D * 4 bytes."""

    def __init__(self, model: nn.Module, kinds: Sequence[str], dim: int) -> None:
        super().__init__()
        self.model, self.kinds, self.dim = model, list(kinds), dim
        self._local: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in self.kinds}
        self.features: dict[str, np.ndarray] = {}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int,
                     dataloader_idx: int = 0) -> Tensor:
        kind = self.kinds[dataloader_idx]
        if kind == "image":
            features = self.model.encode_image(batch["image"], normalize=True)  # (B, D)
        else:
            features = self.model.encode_text(batch["tokens"], normalize=True)  # (B, D)
        self._local[kind].append((batch["index"], features.float()))
        return features  # kept by Lightning only with return_predictions=True

    def on_predict_epoch_end(self) -> None:
        for kind in self.kinds:  # every rank gathers every kind, even with no local rows
            parts = self._local[kind]
            index = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
            features = (torch.cat([f for _, f in parts]) if parts
                        else torch.zeros(0, self.dim, device=self.device))
            self.features[kind] = self._gather(index.to(self.device), features).cpu().numpy()
            self._local[kind] = []

    def _gather(self, index: Tensor, features: Tensor) -> Tensor:
        """Local index (n,) and features (n, D) -> all ranks' rows ordered by index (N, D)."""
        if self.trainer.world_size > 1:
            counts = self.all_gather(torch.tensor(index.numel(), device=self.device))  # (W,)
            pad = int(counts.max()) - index.numel()  # all_gather needs equal shapes
            index = self.all_gather(F.pad(index, (0, pad), value=-1)).flatten()  # (W * m,)
            features = self.all_gather(F.pad(features, (0, 0, 0, pad))).flatten(0, 1)
            features, index = features[index >= 0], index[index >= 0]
        order = index.argsort()
        if not torch.equal(index[order], torch.arange(index.numel(), device=index.device)):
            raise RuntimeError("gathered embeddings do not cover each dataset index once")
        return features[order]


def write_embeddings(out: Path, kind: str, features: np.ndarray, ids: Sequence[str]) -> dict:
    """`<kind>_embeddings.npy` (float32 (N, D)) and `<kind>_ids.txt` (one id per line)."""
    if features.shape[0] != len(ids):
        raise ValueError(f"{kind}: {features.shape[0]} embeddings for {len(ids)} ids")
    np.save(out / f"{kind}_embeddings.npy", features.astype(np.float32, copy=False))
    write_lines(out / f"{kind}_ids.txt", ids)
    return {"embeddings": f"{kind}_embeddings.npy", "ids": f"{kind}_ids.txt"}


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss=true needs FAISS: pip install 'dualprompt[faiss]' "
                          f"(or faiss-cpu / faiss-gpu) ({e})") from e
    return faiss


def write_faiss_index(path: Path, features: np.ndarray) -> None:
    """An exact inner-product index (`IndexFlatIP`): cosine search on normalised rows."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features, dtype=np.float32))
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
