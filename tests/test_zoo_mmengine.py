"""mmengine training checkpoints (issue 22 item 2): ``epoch_1.pth`` written by mmengine's own ``Runner``
(``tests/fixtures/mmengine``, ``scripts/make_mmengine_checkpoint.py``) is read, its bookkeeping (``HistoryBuffer``,
numpy values, the scheduler's ``Counter``) kept as it was, both ``state_dict`` and ``ema_state_dict`` converted and
the stem's momentum remapped; the converted model computes what the original computed (float64), mmengine's own
``load_checkpoint`` loads it strictly and its ``Runner`` resumes training from it.

(``tests/test_fidelity.py`` compares the two files' globals, types and bytes.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery import errors
from focus_surgery.files import convert_file, inspect_file
from focus_surgery.loader import Record, read_checkpoint
from tests.family_models.mmengine.tiny_focus_net import TinyFocusNet

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "mmengine" / "epoch_1.pth"
REFS = FIXTURE.with_suffix(".ref.npz")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("mmengine") / "epoch_1.pth"
    report = convert_file(FIXTURE, dst, verify=True)
    return dst, report.to_dict()


def test_fixture_is_what_mmengine_wrote():
    loaded = read_checkpoint(FIXTURE)
    runner_keys = {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers", "ema_state_dict"}
    assert set(loaded.content) == runner_keys
    buffers = loaded.content["message_hub"]["log_scalars"]
    assert buffers and all(isinstance(b, Record) and b.name == "HistoryBuffer" for b in buffers.values())
    assert loaded.names == {"mmengine.logging.history_buffer.HistoryBuffer"}
    assert all(k.startswith("module.") for k in loaded.content["ema_state_dict"] if k != "steps")
    assert FIXTURE.stat().st_size < 1 << 20


def test_inspect_names_the_runner_checkpoint():
    info = inspect_file(FIXTURE)
    assert info["source"] == "mmengine" and info["epoch"] == 1
    assert "mmengine training checkpoint" in info["summary"] and "backbone.stem: focus form" in info["summary"]


def test_both_state_dicts_and_the_momentum_converted(converted):
    dst, report = converted
    assert report["source"] == "mmengine" and report["converted"] == ["state_dict", "ema_state_dict"]
    assert "remapped" in report["optimizer"] and report["max_abs_err"] <= 1e-12
    content = read_checkpoint(dst).content
    assert content["state_dict"]["backbone.stem.conv.weight"].shape == (8, 3, 6, 6)
    assert content["ema_state_dict"]["module.backbone.stem.conv.weight"].shape == (8, 3, 6, 6)
    momentum = [s["momentum_buffer"].shape for s in content["optimizer"]["state"].values()]
    assert momentum.count((8, 3, 6, 6)) == 1 and (8, 12, 3, 3) not in momentum


@pytest.mark.parametrize("key, ref", [("state_dict", "output_model_float64"), ("ema_state_dict", "output_ema_float64")])
def test_converted_model_outputs_equal_the_original_in_float64(converted, key, ref):
    dst, _ = converted
    refs = np.load(REFS)
    sd = {k.removeprefix("module."): v for k, v in read_checkpoint(dst).content[key].items() if k != "steps"}
    net = TinyFocusNet(converted=True).double().eval()
    net.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = net(torch.from_numpy(refs["input_float64"])).numpy()
    assert np.abs(out - refs[ref]).max() <= 1e-12 * np.abs(refs[ref]).max()


def test_a_broken_permutation_fails_the_check_and_writes_nothing(tmp_path, monkeypatch):
    from focus_surgery import state_dict

    original = state_dict.focus_to_conv_weight
    monkeypatch.setattr(state_dict, "focus_to_conv_weight", lambda w, *a: original(w.flip(1), *a))
    dst = tmp_path / "out.pth"
    with pytest.raises(errors.VerificationFailed):
        convert_file(FIXTURE, dst, verify=True)
    assert not dst.exists()


_MMENGINE_RUN = r"""
import collections, sys, tempfile
import numpy as np, torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import DataLoader
from tests.family_models.mmengine.tiny_focus_net import TinyFocusNet

original, converted = sys.argv[1], sys.argv[2]
# what a user of torch >= 2.6 allows for mmengine's files (weights_only=True); the original needs exactly this too
allowed = [HistoryBuffer, np._core.multiarray._reconstruct, np.ndarray, np.dtype, np._core.multiarray.scalar,
           collections.Counter, getattr, type(np.dtype("float64")), type(np.dtype("int64"))]
with torch.serialization.safe_globals(allowed):
    for path in (original, converted):
        torch.load(path, weights_only=True)
    net = TinyFocusNet(converted=True)
    load_checkpoint(net, converted, map_location="cpu", strict=True, logger="silent")

    class Net(BaseModel):
        def __init__(self):
            super().__init__()
            net = TinyFocusNet(converted=True)
            self.backbone, self.head = net.backbone, net.head

        def forward(self, inputs, labels=None, mode="tensor"):
            logits = self.head(self.backbone(inputs).mean((2, 3)))
            return {"loss": torch.nn.functional.cross_entropy(logits, labels)} if mode == "loss" else logits

    g = torch.Generator().manual_seed(1)
    data = [{"inputs": torch.rand(3, 32, 32, generator=g), "labels": torch.tensor(i % 3)} for i in range(8)]
    runner = Runner(
        model=Net(), work_dir=tempfile.mkdtemp(dir=sys.argv[3]), train_dataloader=DataLoader(data, batch_size=2),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=dict(type="MultiStepLR", milestones=[1], gamma=0.5, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=2), custom_hooks=[dict(type="EMAHook", momentum=0.1)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)), randomness=dict(seed=0),
        load_from=converted, resume=True, default_scope="mmengine",
    )
    runner.train()
state = runner.optim_wrapper.optimizer.state_dict()["state"]
print("RESUMED", runner.epoch, runner.iter, tuple(state[0]["momentum_buffer"].shape))
"""


def test_mmengine_loads_and_resumes_the_converted_checkpoint(converted, tmp_path):
    pytest.importorskip("mmengine")
    dst, _ = converted
    result = subprocess.run(
        [sys.executable, "-c", _MMENGINE_RUN, str(FIXTURE), str(dst), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESUMED 2 8 (8, 3, 6, 6)" in result.stdout  # resumed after epoch 1 (4 iterations), trained epoch 2


CSPDARKNET_CFG = """model = dict(
    backbone=dict(
        act_cfg=dict(type='Swish'),
        deepen_factor=0.33,
        norm_cfg=dict(momentum=0.03, eps=0.001, type='BN'),
        out_indices=(2, 3, 4),
        type='mmdet.CSPDarknet',
        widen_factor=0.5),
    type='YOLOX')
"""


def _with_config(tmp_path: Path, cfg: str) -> Path:
    """The fixture's model weights under an mmengine ``meta`` whose config names ``cfg``'s backbone (issue 24 item 2:
    the geometry comes from the architecture the file names)."""
    content = read_checkpoint(FIXTURE).content
    src = tmp_path / "epoch_cfg.pth"
    torch.save({"meta": {"cfg": cfg, "epoch": 1}, "state_dict": dict(content["state_dict"])}, src)
    return src


def test_the_config_backbone_fixes_the_geometry_and_the_proof_says_stem(tmp_path):
    src = _with_config(tmp_path, CSPDARKNET_CFG)
    report = convert_file(src, tmp_path / "out.pth", verify=True).to_dict()
    assert report["proof"] == "stem" and "CSPDarknet" in report["geometry_from"]
    assert report["verification"]["passed"]
    bare = convert_file(_with_config(tmp_path, "model = dict(type='Custom')"), tmp_path / "bare.pth", verify=True)
    assert bare.to_dict()["proof"] == "layout only"  # a config naming no known backbone: the order is assumed


def test_an_order_contradicting_the_config_backbone_is_refused(tmp_path):
    src = _with_config(tmp_path, CSPDARKNET_CFG)
    with pytest.raises(errors.ConversionError, match=r"--order timm contradicts .*CSPDarknet"):
        convert_file(src, tmp_path / "out.pth", order="timm")
    assert not (tmp_path / "out.pth").exists()
