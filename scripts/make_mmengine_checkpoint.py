"""Build the mmengine training checkpoint fixture (``tests/fixtures/mmengine/epoch_1.pth``) with mmengine's own code.

A real ``mmengine.runner.Runner`` trains ``TinyFocusNet`` (``tests/family_models/mmengine``: a YOLOX-style ``Focus``
stem) for one epoch of four iterations on random data, with the EMA hook, an SGD optimizer with momentum, a
``MultiStepLR`` scheduler and ``default_hooks.checkpoint``: mmengine writes ``epoch_1.pth`` (``meta``, ``state_dict``,
``message_hub`` with its ``HistoryBuffer`` objects, ``optimizer``, ``param_schedulers``, ``ema_state_dict`` with
``module.`` keys) exactly as every mmengine training run does. The outputs of the trained model and of its EMA on a
fixed input are stored next to it in float64 (``epoch_1.ref.npz``).

mmengine is not a dependency of the project: install it for this script only, e.g.

    pip install --target /tmp/mmengine-pkgs mmengine
    PYTHONPATH=/tmp/mmengine-pkgs .venv/bin/python scripts/make_mmengine_checkpoint.py
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "mmengine"
sys.path.insert(0, str(ROOT))

from tests.family_models.mmengine.tiny_focus_net import TinyFocusNet  # noqa: E402


def reference_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 48, dtype=torch.float64)


def main() -> None:
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    class Net(BaseModel):
        def __init__(self):
            super().__init__()
            net = TinyFocusNet()
            self.backbone, self.head = net.backbone, net.head

        def forward(self, inputs, labels=None, mode="tensor"):
            logits = self.head(self.backbone(inputs).mean((2, 3)))
            if mode == "loss":
                return {"loss": torch.nn.functional.cross_entropy(logits, labels)}
            return logits

    generator = torch.Generator().manual_seed(1)
    data = [{"inputs": torch.rand(3, 32, 32, generator=generator), "labels": torch.tensor(i % 3)} for i in range(8)]
    work = Path(tempfile.mkdtemp(prefix="mmengine-fixture-"))
    runner = Runner(
        model=Net(),
        work_dir=str(work),
        train_dataloader=DataLoader(data, batch_size=2, shuffle=False),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=dict(type="MultiStepLR", milestones=[1], gamma=0.5, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        custom_hooks=[dict(type="EMAHook", momentum=0.1)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)),
        randomness=dict(seed=0),
        default_scope="mmengine",
    )
    runner.train()
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / "epoch_1.pth"
    shutil.copyfile(work / "epoch_1.pth", target)

    ckpt = torch.load(target, map_location="cpu", weights_only=False)  # our own file, written just above
    x = reference_input()
    outputs = {"input_float64": x.numpy()}
    for name, sd in (("model", ckpt["state_dict"]), ("ema", ckpt["ema_state_dict"])):
        sd = {k.removeprefix("module."): v for k, v in sd.items() if k != "steps"}
        net = TinyFocusNet().double().eval()
        net.load_state_dict(sd, strict=True)
        with torch.no_grad():
            outputs[f"output_{name}_float64"] = net(x).numpy()
    np.savez(OUT / "epoch_1.ref.npz", **outputs)
    shutil.rmtree(work, ignore_errors=True)
    print(target, target.stat().st_size, hashlib.sha256(target.read_bytes()).hexdigest())
    print(sorted(ckpt), sorted(ckpt["meta"]))


if __name__ == "__main__":
    main()
