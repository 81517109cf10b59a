"""What a person looks at after a run: `retrieval_examples.png` (fixed test queries, the frozen
CLIP's top 5 beside the prompted model's, ground truth marked) and `curves.png` (training loss
and validation R@1 per epoch)."""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data.datasets import Gallery, Sample, collate_gallery, open_image, to_rgb

log = logging.getLogger(__name__)

QUERIES = 8  # per direction
TOP = 5
MAX_GALLERY = 1000  # images embedded for the examples (the first ones of the test split)
GOOD, BAD = "#1a9641", "#d7191c"


class Curves(L.Callback):
    """Per epoch: the mean training loss and the validation R@1 (AVG) in each direction."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._loss_sum, self._steps = 0.0, 0  # a tensor sum: no device sync per step
        self._val: dict[str, float] = {}  # this epoch's validation, if it ran

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum, self._steps = self._loss_sum + loss.detach(), self._steps + 1

    def on_validation_end(self, trainer, pl_module) -> None:
        # after the module's own epoch-end hook, which computes val_results
        if trainer.sanity_checking:
            return
        avg = getattr(pl_module, "val_results", {}).get("AVG", {})
        self._val = {f"val_{k}": avg[k] for k in ("i2t_R@1", "t2i_R@1", "rsum") if k in avg}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = {"epoch": trainer.current_epoch, **self._val}
        if self._steps:
            row["train_loss"] = float(self._loss_sum) / self._steps
        self.history.append(row)
        self._loss_sum, self._steps, self._val = 0.0, 0, {}


def plot_curves(history: Sequence[dict[str, float]], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (loss_ax, r1_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] + 1 for h in history]
    loss_ax.plot(epochs, [h.get("train_loss", float("nan")) for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    for key, label in (("val_i2t_R@1", "image -> text"), ("val_t2i_R@1", "text -> image")):
        r1_ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    best = max(history, key=lambda h: h.get("val_rsum", float("-inf")), default=None)
    if best is not None and "val_rsum" in best:
        r1_ax.axvline(best["epoch"] + 1, ls="--", color="grey", lw=1,
                      label="best epoch (val RSUM)")
    r1_ax.set(xlabel="epoch", ylabel="R@1 (%)", title="validation R@1 (AVG over domains)")
    r1_ax.legend(fontsize=8)
    for ax in (loss_ax, r1_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _embed(model: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    was_training = model.training
    model.eval()
    images, texts = [], []
    for batch in loader:
        images.append(model.encode_image(batch.image, normalize=True).float())
        texts.append(model.encode_text(batch.tokens, normalize=True).float())
    model.train(was_training)
    return torch.cat(images), torch.cat(texts)


def retrieval_examples(path: Path, samples: Sequence[Sample], models: dict[str, nn.Module],
                       transform: Callable, tokenizer: Callable, title: str = "",
                       batch_size: int = 64) -> Optional[Path]:
    """Draw `QUERIES` fixed test queries per direction (evenly spaced over the split), each
    with the top `TOP` of every model in `models` ({"zero-shot": clip, "prompted": model});
    ground truth in green. None (and a log line) when the images are not files (shards)."""
    samples = list(samples)[:MAX_GALLERY]
    if not samples or any(s.member is not None for s in samples):
        log.info("no retrieval_examples.png: the test images are not files")
        return None
    loader = DataLoader(Gallery(samples, transform, tokenizer, "examples"),
                        batch_size=batch_size, collate_fn=collate_gallery)
    features = {name: _embed(m, loader) for name, m in models.items()}
    captions = [(i, c) for i, s in enumerate(samples) for c in s.record.captions]
    owner = torch.tensor([i for i, _ in captions])
    pick = lambda n: sorted({round(j * (n - 1) / max(1, QUERIES - 1)) for j in range(QUERIES)})
    image_queries, text_queries = pick(len(samples)), pick(len(captions))
    top = {}
    for name, (img, txt) in features.items():
        k = min(TOP, len(samples))
        top[name] = ((img[image_queries] @ txt.t()).topk(min(TOP, len(captions))).indices,
                     (txt[text_queries] @ img.t()).topk(k).indices)
    _draw(path, samples, captions, owner, image_queries, text_queries, top, title)
    return path


def _thumb(sample: Sample, size: int = 112) -> Image.Image:
    with open_image(sample.path) as img:
        img = to_rgb(img)
        img.thumbnail((size, size))
        return img


def _draw(path: Path, samples, captions, owner, image_queries, text_queries,
          top: dict[str, tuple[Tensor, Tensor]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(top)
    rows = len(image_queries) + len(text_queries)
    cols = 1 + TOP * len(names)
    height = 1.9 * rows + 1.4
    fig = plt.figure(figsize=(2.0 * cols, height))
    grid = fig.add_gridspec(rows, cols, hspace=0.55, wspace=0.08, top=1 - 1.4 / height,
                            bottom=0.2 / height)

    def axis(r: int, c0: int, c1: int) -> Any:
        ax = fig.add_subplot(grid[r, c0:c1])
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def wrap(text: str, width: int) -> str:
        return "\n".join(textwrap.wrap(text, width)[:6])

    for r, q in enumerate(image_queries):  # image -> text
        ax = axis(r, 0, 1)
        ax.imshow(_thumb(samples[q]))
        ax.set_title("image query" if r == 0 else "", fontsize=9)
        for m, name in enumerate(names):
            ax = axis(r, 1 + m * TOP, 1 + (m + 1) * TOP)
            for j, t in enumerate(top[name][0][r].tolist()):
                hit = int(owner[t]) == q
                ax.text(0.01, 0.9 - j * 0.2, f"{j + 1}. {'[GT] ' if hit else ''}"
                        + textwrap.shorten(captions[t][1], 110), fontsize=7.5,
                        color=GOOD if hit else "black", transform=ax.transAxes, va="top")
            ax.set_title(f"{name}: top {TOP} captions" if r == 0 else "", fontsize=9)
    for r, q in enumerate(text_queries, start=len(image_queries)):  # text -> image
        ax = axis(r, 0, 1)
        ax.axis("off")
        ax.text(0, 1, wrap(captions[q][1], 28), fontsize=7.5, va="top", transform=ax.transAxes)
        if r == len(image_queries):
            ax.set_title("caption query", fontsize=9)
        for m, name in enumerate(names):
            for j, i in enumerate(top[name][1][r - len(image_queries)].tolist()):
                ax = axis(r, 1 + m * TOP + j, 2 + m * TOP + j)
                ax.imshow(_thumb(samples[i]))
                hit = i == captions[q][0]
                for spine in ax.spines.values():
                    spine.set_edgecolor(GOOD if hit else "#bbbbbb")
                    spine.set_linewidth(4 if hit else 1)
                if r == len(image_queries) and j == 0:
                    ax.set_title(f"{name}: top {TOP} images", fontsize=9, loc="left")
    fig.suptitle((title + "\n" if title else "") + "ground truth in green (captions marked "
                 "[GT], images framed)", fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
