"""A procedural fine-grained retrieval world and a tiny CLIP pretrained on it, for offline benchmarks.

Entry points: `build_world` (downstream FDRD-style domains on disk), `ensure_pretrained_clip`
(a cached open_clip folder loadable with `local-dir:`), `diagnose` (probes and zero-shot recall).
CLI: `python -m dualprompt.world {build,pretrain,probe} --help`.
"""

from .corpus import PretrainStream, WorldConfig, build_world
from .pretrain import PretrainConfig, TinyClipConfig, ensure_pretrained_clip, pretrain_clip
from .probe import diagnose

__all__ = [
    "PretrainConfig", "PretrainStream", "TinyClipConfig", "WorldConfig", "build_world", "diagnose",
    "ensure_pretrained_clip", "pretrain_clip",
]
