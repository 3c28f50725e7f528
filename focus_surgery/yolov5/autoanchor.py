"""YOLOv5's autoanchor (``utils/autoanchor.py`` of v7.0): best possible recall of the anchors on the training labels,
and below 0.98, k-means anchors refined by a genetic algorithm. Random numbers come from the same global generators
in the same order as YOLOv5 draws them, and SciPy's ``kmeans`` is re-done in NumPy: same labels and seeds, same
result."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import torch
from torch import nn

BPR_THRESHOLD = 0.98  # YOLOv5 recomputes anchors below this best possible recall


def ratio_metric(wh: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv5's anchor fit: ``x[i, j] = min over w, h of min(r, 1/r)``, ``r = wh_i / anchor_j``; ``best = max_j x``.

    Args:
        wh (torch.Tensor): (n, 2) label sizes in pixels.
        anchors (torch.Tensor): (k, 2) anchor sizes in pixels.
    """
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0]


def label_sizes(shapes: np.ndarray, labels: list[np.ndarray]) -> np.ndarray:
    """Label widths and heights (n, 2) in pixels, from the (N, 2) image sizes (width, height) in pixels and per image
    (m, 4) normalised xywh boxes."""
    return np.concatenate([lb[:, 2:4] * s for s, lb in zip(shapes, labels)])


def _vq(obs: np.ndarray, book: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest code (first on ties) and its Euclidean distance, in the data's dtype (SciPy's ``vq``)."""
    d2 = np.zeros((obs.shape[0], book.shape[0]), dtype=obs.dtype)
    for f in range(obs.shape[1]):  # feature by feature, as SciPy's loop accumulates
        diff = obs[:, f : f + 1] - book[None, :, f]
        d2 += diff * diff
    code = d2.argmin(1)
    return code, np.sqrt(d2[np.arange(len(obs)), code])


def _lloyd(obs: np.ndarray, book: np.ndarray, thresh: float) -> tuple[np.ndarray, float]:
    """SciPy's ``_kmeans``: Lloyd iterations until the mean distortion changes by at most ``thresh``."""
    diff, dists = np.inf, deque([np.inf], maxlen=2)
    while diff > thresh:
        code, distort = _vq(obs, book)
        dists.append(np.mean(distort, axis=-1))
        sums = np.zeros_like(book)
        counts = np.bincount(code, minlength=len(book))
        np.add.at(sums, code, obs)  # sequential sums in the data's dtype, as SciPy's update_cluster_means
        has = counts > 0
        book = (sums[has] / counts[has, None].astype(obs.dtype)).astype(obs.dtype)
        diff = np.abs(dists[0] - dists[1])
    return book, dists[1]


def kmeans(obs: np.ndarray, k: int, iterations: int = 30, thresh: float = 1e-5) -> np.ndarray:
    """SciPy's ``kmeans(obs, k, iter)``: best of ``iterations`` runs seeded by NumPy's global ``RandomState``."""
    best, best_dist = None, np.inf
    for _ in range(iterations):
        guess = obs[np.random.choice(obs.shape[0], size=int(k), replace=False)]
        book, dist = _lloyd(obs, guess, thresh)
        if dist < best_dist:
            best, best_dist = book, dist
    return best


def kmean_anchors(wh0: np.ndarray, n: int, img_size: int, thr: float = 4.0, gen: int = 1000) -> np.ndarray:
    """k-means anchors evolved by a genetic algorithm (YOLOv5's ``kmean_anchors``), sorted small to large.

    Args:
        wh0 (np.ndarray): (m, 2) label sizes in pixels (``label_sizes``).
        n (int): Number of anchors (all levels).
        img_size (int): Training image size (for the random fall-back).
        thr (float): ``anchor_t``.
        gen (int): Generations.

    Returns:
        (np.ndarray): (n, 2) float32 anchors in pixels.
    """
    thr = 1 / thr

    def fitness(k: np.ndarray) -> torch.Tensor:
        best = ratio_metric(wh, torch.tensor(k, dtype=torch.float32))[1]
        return (best * (best > thr).float()).mean()

    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)  # labels larger than 2 px
    try:
        assert n <= len(wh)
        s = wh.std(0)  # whitening
        k = kmeans(wh / s, n, iterations=30) * s
        assert n == len(k)
    except AssertionError:  # too few distinct labels: YOLOv5's random initialisation
        k = np.sort(np.random.rand(n * 2)).reshape(n, 2) * img_size
    wh = torch.tensor(wh, dtype=torch.float32)
    k = k[np.argsort(k.prod(1))]
    f, shape, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    for _ in range(gen):
        v = np.ones(shape)
        while (v == 1).all():  # mutate until something changes
            v = ((np.random.random(shape) < mp) * random.random() * np.random.randn(*shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k.copy() * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
    return k[np.argsort(k.prod(1))].astype(np.float32)


def check_anchors(
    head: nn.Module, shapes: np.ndarray, labels: list[np.ndarray], thr: float = 4.0, imgsz: int = 640
) -> dict:
    """YOLOv5's ``check_anchors`` on a ``LegacyDetect`` head: replace its anchors (in place) if k-means + evolution
    gives a better best possible recall (BPR) than the current ones and the current BPR is below 0.98.

    Args:
        head (nn.Module): ``LegacyDetect`` (anchors in grid units; ``anchor_grid`` in pixels when present).
        shapes (np.ndarray): (N, 2) training image sizes (width, height).
        labels (list[np.ndarray]): Per image (m, 4) normalised xywh boxes.
        thr (float): ``anchor_t``.
        imgsz (int): Training image size.

    Returns:
        (dict): ``bpr`` and ``anchors_per_target`` before, ``new_bpr`` (None if not recomputed), ``replaced``.
    """
    scaled = imgsz * shapes / shapes.max(1, keepdims=True)
    scale = np.random.uniform(0.9, 1.1, size=(scaled.shape[0], 1))  # YOLOv5's scale jitter
    wh = torch.tensor(label_sizes(scaled * scale, labels)).float()

    def metric(k: torch.Tensor) -> tuple[float, float]:
        x, best = ratio_metric(wh, k)
        return float((best > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())

    stride = head.stride.to(head.anchors.device).view(-1, 1, 1)
    anchors = head.anchors.clone() * stride
    bpr, aat = metric(anchors.cpu().view(-1, 2))
    report = {"bpr": bpr, "anchors_per_target": aat, "new_bpr": None, "replaced": False}
    if bpr > BPR_THRESHOLD:
        return report
    na = head.anchors.numel() // 2
    new = kmean_anchors(label_sizes(scaled, labels), n=na, img_size=imgsz, thr=thr)
    report["new_bpr"] = metric(torch.tensor(new))[0]
    if report["new_bpr"] > bpr:
        new_px = torch.tensor(new, device=head.anchors.device).type_as(head.anchors).view_as(head.anchors)
        da = new_px.prod(-1).mean(-1).view(-1)  # YOLOv5's check_anchor_order: anchor area grows with stride
        da, ds = da[-1] - da[0], head.stride[-1] - head.stride[0]
        if da and da.sign() != ds.sign():
            new_px = new_px.flip(0)
        with torch.no_grad():
            head.anchors[:] = new_px / stride
            if "anchor_grid" in head._buffers:
                head._buffers["anchor_grid"][:] = new_px.view_as(head._buffers["anchor_grid"])
        report["replaced"] = True
    return report
