"""One identifier for a set of tensors (SHA-256 of names, dtypes, shapes and bytes): a ``.safetensors`` + ``.json``
pair carries it in both files, so a pair whose halves come from two conversions is refused when read."""

from __future__ import annotations

import hashlib

import torch


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 over every tensor (name, dtype, shape, then its bytes), independent of the dict's order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{len(name)}:{name}:{str(tensor.dtype)}:{list(tensor.shape)}\n".encode("utf-8", "surrogatepass"))
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
