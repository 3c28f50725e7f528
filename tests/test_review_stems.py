"""Review of the tensors-only stem proof (``Source.held_stems`` / ``written_stems``): it applies to the output a
source writes tensors-only by design (``.safetensors``), never to a writer bug that drops the checkpoint around the
tensors; the written stem is run from the bytes read back."""

from pathlib import Path

import pytest

from focus_surgery import checkpoint_io
from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.sources import records_io

FAMILY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "focus-family"
DARKNET = FAMILY / "yolor_w6-div32_last.pt"
YOLOV7_LAST = FAMILY / "yolov7-e6-w003125_last.pt"
YOLOV7_STRIPPED = FAMILY / "yolov7-e6-w003125_stripped.pt"


def _flat_pt_writer(monkeypatch):
    """A ``.pt`` writer that writes only the (converted) tensors of the model a ``.safetensors`` holds, as a flat state
    dict: the epoch, the optimizer, the other model copy and every record are lost on the way to disk."""
    save = checkpoint_io.torch_save

    def flat_save(content, path, *rest):
        held = content.get("ema") or content["model"]
        sd = held.state_dict() if hasattr(held, "state_dict") else held
        save({k: v.detach().contiguous() for k, v in sd.items()}, path)

    monkeypatch.setattr(checkpoint_io, "torch_save", flat_save)
    monkeypatch.setattr(records_io, "torch_save", flat_save)


@pytest.mark.parametrize("src", [DARKNET, YOLOV7_LAST, YOLOV7_STRIPPED], ids=["darknet", "yolov7", "yolov7-no-ema"])
def test_a_checkpoint_written_as_a_bare_state_dict_fails_its_proof(tmp_path, monkeypatch, src):
    _flat_pt_writer(monkeypatch)
    dst = tmp_path / "o.pt"
    with pytest.raises(VerificationFailed, match="the written file has no stem"):
        convert_file(src, dst, verify=True)
    assert not dst.exists() and list(tmp_path.iterdir()) == []
