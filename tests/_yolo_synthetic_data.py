"""A tiny synthetic detection dataset in Ultralytics' layout, written by the tests (no download, a few KB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230))  # one class per colour (BGR as written by cv2)


def write_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0, nc: int = 3) -> Path:
    """Images with 1-3 filled rectangles on a noisy background; returns the data YAML path.

    Labels are exact (the rectangles' own boxes), so a model can learn them in a few epochs.
    """
    import cv2

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, nc))
                w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y0 : y0 + h, x0 : x0 + w] = COLOURS[c % len(COLOURS)]
                lines.append(f"{c} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{k}.png"), img)
            (root / "labels" / split / f"{k}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: c{i}" for i in range(nc))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def write_sized_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, nc: int = 3) -> list[Path]:
    """One noisy image with 1-3 filled rectangles per (width, height) in ``sizes``, ``<k>.png`` in ``folder``.

    No labels are written (the caller writes its own); returns the image paths.
    """
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, (width, height) in enumerate(sizes):
        img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            img[y0 : y0 + h, x0 : x0 + w] = COLOURS[int(rng.integers(0, nc)) % len(COLOURS)]
        paths.append(folder / f"{k}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths
