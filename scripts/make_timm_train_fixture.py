"""Write tests/fixtures/timm-train/: a TResNet checkpoint written by timm's own ``train.py``, and its outputs.

timm's ``train.py`` is not in the timm wheel: give its path (from a checkout of huggingface/pytorch-image-models, e.g.
``git --git-dir=D show <commit>:train.py > train.py``). It is run as its users run it, on the CPU, on a tiny random
image folder, for one epoch of two steps (so SGD's momentum buffers exist) with ``--model-ema`` (``state_dict_ema``),
and its ``CheckpointSaver`` writes ``last.pth.tar``. The model is a real ``tresnet_m`` (``arch: tresnet_m``) made tiny
through ``--model-kwargs`` (one block per stage, ``width_factor`` 1/8): ``SpaceToDepth(4)`` + ``ConvNormAct(48, 8, 3)``.

Then timm builds the same model, loads ``state_dict`` and ``state_dict_ema`` strictly, and their float64 outputs on
a fixed input go to ``last.ref.npz``. Usage::

    python scripts/make_timm_train_fixture.py --train-py /path/to/train.py [--out tests/fixtures/timm-train]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

MODEL = "tresnet_m"
MODEL_KWARGS = {"layers": [1, 1, 1, 1], "width_factor": 0.125}
NUM_CLASSES = 2
INPUT = (2, 3, 64, 64)  # the reference input: torch.manual_seed(0); torch.rand(*INPUT, dtype=float64)


def image_folder(root: Path) -> None:
    """Two classes of four random 32x32 PNGs each, for train and validation."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def train(train_py: Path, data: Path, output: Path) -> Path:
    """timm's train.py, one epoch on the CPU; returns its ``last.pth.tar``."""
    kwargs = [f"{k}={v!r}".replace(" ", "") for k, v in MODEL_KWARGS.items()]
    command = [sys.executable, str(train_py), "--data-dir", str(data), "--model", MODEL, "--model-kwargs", *kwargs]
    command += ["--num-classes", str(NUM_CLASSES), "--img-size", "32", "-b", "4", "--epochs", "1", "--device", "cpu"]
    command += ["--model-ema", "--model-ema-decay", "0.9", "--workers", "0", "--no-prefetcher", "--lr", "0.01"]
    command += ["--warmup-epochs", "0", "--seed", "0", "--output", str(output), "--experiment", "tresnet"]
    subprocess.run(command, check=True, cwd=train_py.parent)
    return output / "tresnet" / "last.pth.tar"


def references(checkpoint: Path) -> dict[str, np.ndarray]:
    """The float64 outputs of the model and its EMA, each loaded strictly into timm's own model."""
    import timm

    from timm.utils.checkpoint_saver import load_checkpoint_metadata

    args = load_checkpoint_metadata(str(checkpoint))["args"]  # timm's own reader (weights_only, Namespace allowed)
    torch.manual_seed(0)
    x = torch.rand(*INPUT, dtype=torch.float64)
    out = {"input": x.numpy()}
    for key in ("state_dict", "state_dict_ema"):
        model = timm.create_model(args.model, num_classes=args.num_classes, **args.model_kwargs)
        timm.models.load_checkpoint(model, str(checkpoint), use_ema=key == "state_dict_ema", strict=True)
        with torch.no_grad():
            out[f"output_{key}_float64"] = model.double().eval()(x).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py (pytorch-image-models)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/timm-train")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        image_folder(Path(tmp) / "data")
        last = train(args.train_py.resolve(), Path(tmp) / "data", Path(tmp) / "output")
        shutil.copyfile(last, args.out / "last.pth.tar")
    np.savez(args.out / "last.ref.npz", **references(args.out / "last.pth.tar"))
    for name in ("last.pth.tar", "last.ref.npz"):
        print(name, hashlib.sha256((args.out / name).read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
