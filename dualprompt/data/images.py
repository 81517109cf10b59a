"""Finding a caption record's image under a user-given image root, by file name.

FDRD caption files name images by a flattened file name (the paths inside them are the
authors'), while the images sit in the source datasets' own layouts (CoOp splits):

| FDRD file_name          | file under the root                   |
|-------------------------|---------------------------------------|
| Faces_image_0426.jpg    | 101_ObjectCategories/Faces/image_0426.jpg |
| cars_train_05266.jpg    | cars_train/05266.jpg                  |
| monkshood_image_06422   | jpg/image_06422.jpg                   |
| Sphynx_43, 1514522      | images/Sphynx_43.jpg, images/1514522.jpg |

`ImageIndex` tries, in order: the name as a relative path; the name with one '_' read as a
folder separator; the name without a leading '<prefix>_'; each with and without '.jpg'; and
matches a candidate against every file under the root whose relative path ends with it.
The first candidate with exactly one match wins. To never pick a wrong image silently, the
search stops with no match when a candidate matches several files, or when a candidate's
folder exists under the root but lacks the file (``cars_train_05266.jpg`` must not fall back
to ``cars_test/05266.jpg``).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Optional

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageIndex:
    """All image files under `root`, looked up by (flattened) file name."""

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image root is not a folder: {self.root}")
        self._by_basename: Optional[dict[str, list[str]]] = None
        self._folders: set[str] = set()

    def _index(self) -> dict[str, list[str]]:
        if self._by_basename is None:
            index: dict[str, list[str]] = defaultdict(list)
            for dirpath, dirs, files in os.walk(self.root, followlinks=True):
                rel = os.path.relpath(dirpath, self.root)
                self._folders.update(dirs)
                for f in files:
                    if f.lower().endswith(IMAGE_SUFFIXES):
                        index[f].append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
            self._by_basename = dict(index)
        return self._by_basename

    def resolve(self, file_name: str) -> Optional[Path]:
        """The image file for `file_name`, or None when nothing (or only ambiguity) matches."""
        direct = self.root / file_name
        if direct.is_file():
            return direct
        index = self._index()
        for candidate in _candidates(file_name):
            base = candidate.rsplit("/", 1)[-1]
            matches = [p for p in index.get(base, ())
                       if p == candidate or p.endswith("/" + candidate)]
            if len(matches) == 1:
                return self.root / matches[0]
            if len(matches) > 1:
                return None  # ambiguous: refuse to guess
            if "/" in candidate and candidate.rsplit("/", 2)[-2] in self._folders:
                return None  # its folder exists but lacks the file: the image is missing
        return None


def _candidates(name: str) -> list[str]:
    names = [name]
    parts = name.split("_")
    names += ["_".join(parts[:i]) + "/" + "_".join(parts[i:]) for i in range(1, len(parts))]
    names += ["_".join(parts[i:]) for i in range(1, len(parts))]
    out: list[str] = []
    for n in names:
        for c in (n, n + ".jpg") if not n.lower().endswith(IMAGE_SUFFIXES) else (n,):
            if c not in out:
                out.append(c)
    return out
