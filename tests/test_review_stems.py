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
YOLOR_PAPER = FAMILY / "yolor-paper-w6-w0046875_stripped.pt"  # YOLOR's paper branch: records, no EMA


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


def test_a_safetensors_holding_the_model_instead_of_the_ema_fails_its_stem_run(tmp_path, monkeypatch):
    """The file's EMA and model differ (the stem too): a writer that writes the model's tensors where the EMA's belong
    fails, and the stem run itself (the written bits against the original EMA's stem) catches it."""
    from focus_surgery.sources import yolov7

    def wrong_write(content, models, dst, like):
        tensors = {k: v.detach().contiguous() for k, v in models["model"].state_dict().items()}
        checkpoint_io.save_checkpoint(tensors, dst, {"converted_by": "focus-surgery", "to": "conv"})

    monkeypatch.setattr(yolov7.Yolov7Source, "_write", staticmethod(wrong_write))
    dst = tmp_path / "o.safetensors"
    with pytest.raises(VerificationFailed) as failed:
        convert_file(YOLOV7_LAST, dst, verify=True)
    check = failed.value.report.fields["verification"]
    assert check["stems"] == ["ema:1"] and not check["stem"]["passed"] and check["stem"]["max_abs_err"] > 1e-6
    assert not check["tensors"]["passed"] and not check["passed"]
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def _edited_safetensors(monkeypatch, edit):
    """A ``.safetensors`` writer that applies ``edit`` to the state dict on its way to disk."""
    save = checkpoint_io.safetensors_save

    def edited_save(tensors, path, *rest):
        save(edit(tensors), path, *rest)

    monkeypatch.setattr(checkpoint_io, "safetensors_save", edited_save)


EDITS = {
    "stem-bn-dropped": lambda sd: {k: v for k, v in sd.items() if k != "model.1.bn.running_var"},
    "stem-bias-added": lambda sd: {**sd, "model.1.conv.bias": sd["model.1.bn.bias"].clone()},
    "stem-bn-wrong": lambda sd: {**sd, "model.1.bn.running_var": sd["model.1.bn.running_var"] * 2},
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_yolov7_safetensors_with_a_wrong_stem_row_fails(tmp_path, monkeypatch, edit):
    _edited_safetensors(monkeypatch, EDITS[edit])
    dst = tmp_path / "o.safetensors"
    with pytest.raises(VerificationFailed):
        convert_file(YOLOV7_LAST, dst, verify=True)
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_a_yolov7_safetensors_of_scope_all_is_proven(tmp_path):
    report = convert_file(YOLOV7_LAST, tmp_path / "o.safetensors", verify=True, scope="all")
    check = report["verification"]
    assert report.proof == "stem" and check["passed"] and check["stems"] == ["ema:1"] and report.max_abs_err < 1e-12


def _unconverted_writer(monkeypatch, src):
    """A writer that writes the original (its stem not converted) where the conversion belongs: the report says the
    stem was converted, the file computes what the original does, and the user's converted config cannot load it."""
    from focus_surgery.sources import darknet, load, yolov7

    original = load(src)
    if src == DARKNET:
        write = darknet.PlainStateDictSource.write

        def unconverted(content, place, dst, to, like=None):
            write(original.content, place, dst, to, like)

        monkeypatch.setattr(darknet.PlainStateDictSource, "write", staticmethod(unconverted))
    else:
        write_records = yolov7.Yolov7Source._write
        models = yolov7.Yolov7Source()._models(original.content)

        def unconverted_records(content, _models, dst, like):
            write_records(original.content, models, dst, original)

        monkeypatch.setattr(yolov7.Yolov7Source, "_write", staticmethod(unconverted_records))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize(
    "src",
    [DARKNET, YOLOV7_LAST, YOLOV7_STRIPPED, YOLOR_PAPER],
    ids=["darknet", "yolov7", "yolov7-no-ema", "yolor-paper"],
)
def test_a_stem_written_unconverted_fails_its_proof(tmp_path, monkeypatch, src, suffix):
    _unconverted_writer(monkeypatch, src)
    dst = tmp_path / f"o{suffix}"
    with pytest.raises(VerificationFailed):
        convert_file(src, dst, verify=True)
    assert not dst.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("src", [DARKNET, YOLOV7_LAST], ids=["darknet", "yolov7"])
def test_verify_compares_an_original_with_its_safetensors_conversion(tmp_path, src):
    """``verify ORIGINAL CONVERTED`` of a family file and its ``.safetensors``: the stem is remapped as the original's
    family converts it (darknet's 7x7 with its zero row and column), then every tensor compared."""
    from focus_surgery.files import verify_files

    dst = tmp_path / "o.safetensors"
    convert_file(src, dst, verify=True)
    result = verify_files(src, dst)
    assert result["passed"] and result["max_abs_err"] == 0.0 and "stem remapped" in result["compared"], result
    assert result["tensors"] == sum(t.numel() > 0 for t in checkpoint_io.load_checkpoint(dst).content.values())


def test_a_yolor_paper_safetensors_is_proven_on_its_model_stem(tmp_path):
    report = convert_file(YOLOR_PAPER, tmp_path / "o.safetensors", verify=True)
    check = report["verification"]
    assert report.proof == "stem" and check["passed"] and check["stems"] == ["model:1"] and report.max_abs_err < 1e-12


def _original_writer(monkeypatch, src):
    """A ``.pt`` writer that writes the original, as it was read, where the conversion belongs."""
    from focus_surgery.sources import load

    original = load(src)
    save = checkpoint_io.torch_save

    def original_save(content, path, *rest):
        save(original.content, path, original)

    monkeypatch.setattr(checkpoint_io, "torch_save", original_save)
    monkeypatch.setattr(records_io, "torch_save", original_save)


@pytest.mark.parametrize("form", ["state-dict", "model"])
def test_a_conversion_to_conv_written_unconverted_fails_its_proof(tmp_path, monkeypatch, form):
    """A state dict (stem proof) or a model file (model proof) whose writer wrote the original: it computes what the
    original does, so only the written file's form tells, and every tensor in its original shape is no conv stem."""
    import test_proofs

    src = (
        test_proofs._nested(tmp_path / "in.pt") if form == "state-dict" else test_proofs._model_file(tmp_path / "in.pt")
    )
    _original_writer(monkeypatch, src)
    with pytest.raises(VerificationFailed, match="unconverted"):
        convert_file(src, tmp_path / "out.pt", verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]
