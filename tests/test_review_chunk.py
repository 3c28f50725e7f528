"""Review of the zip copy's buffer-sized write() calls (``zip_rewrite._write``, issue 19): the archive written in
small calls is the very archive written in one call per record, at every edge of the buffer."""

from __future__ import annotations

import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery import focus_to_conv_weight
from focus_surgery.loader import read_checkpoint, zip_rewrite

STEM = "model.0.conv.conv.weight"
BUFFER = 256  # bytes; the records below sit on and around multiples of it


def _state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = {STEM: torch.randn(16, 12, 3, 3)}  # 6,912 bytes: 27 buffers exactly
    sizes = {"exact": 64, "big": 4096, "under": 63, "over": 65, "empty": 0, "one": 1}  # float32: 256, 16384, ...
    for name, n in sizes.items():
        sd[f"edge.{name}"] = torch.randn(n)
    for i in range(40):  # a pickle and a central directory many buffers long
        sd[f"model.{i + 1}.a_rather_long_parameter_name_for_the_directory.weight"] = torch.randn(3)
    sd["edge.late"] = torch.randn(65)  # changed in place below: pages away from the storages read from the file
    return sd


def _convert(src: Path, dst: Path, mode: str, buffer: int, in_place: bool) -> zip_rewrite.Outcome:
    loaded = read_checkpoint(src, mode)
    content = loaded.content if in_place else dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    if in_place:  # a kept storage changed since the read: written from memory, its header's CRC-32 patched
        content["edge.late"].add_(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zip_rewrite, "COPY_BUFFER_BYTES", buffer)
        with zip_rewrite.recording() as outcomes:
            assert zip_rewrite.write_copying(content, dst, loaded) is not None
    (outcome,) = outcomes
    if mode != "copy" and sys.platform.startswith("linux"):  # kept storages read from the file (``_stream``)
        assert outcome.bytes_from_file > 16 * BUFFER
    assert outcome.buffer_bytes == buffer and outcome.storages_written == (2 if in_place else 1)
    return outcome


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("mode", ["copy", "mmap", "mmap-nocrc"])
def test_small_writes_make_the_same_archive(tmp_path: Path, monkeypatch, mode: str, in_place: bool, zip64: bool):
    if zip64:
        monkeypatch.setattr(zip_rewrite, "ZIP64_LIMIT", 500)  # every offset, and the directory's, past 500 bytes
    src = tmp_path / "in.pt"
    sd = _state_dict()
    torch.save(sd, src)
    small, whole = tmp_path / "small.pt", tmp_path / "whole.pt"
    outcome = _convert(src, small, mode, BUFFER, in_place)
    _convert(src, whole, mode, 1 << 30, in_place)
    raw = small.read_bytes()
    assert raw == whole.read_bytes()  # byte for byte what one write() per record makes
    assert outcome.pickle_bytes > 4 * BUFFER and len(raw) - raw.rindex(b"PK\x01\x02") > 0
    with zipfile.ZipFile(small) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        first = min(i.header_offset for i in infos)
        directory = archive.start_dir
    assert len(raw) - directory > 8 * BUFFER  # the central directory itself went in many calls
    assert first == 0
    for info in infos:  # each local header's CRC-32 (the patched one too) and sizes agree with the directory's
        crc, size = struct.unpack("<II", raw[info.header_offset + 14 : info.header_offset + 22])
        assert crc == info.CRC, info.filename
        assert size == (0xFFFFFFFF if zip64 and info.file_size >= 500 else info.file_size), info.filename
    assert zip_rewrite.check_copied(outcome, small)["passed"]
    expected = dict(sd)
    expected["model.0.conv.weight"] = focus_to_conv_weight(expected.pop(STEM))
    if in_place:
        expected["edge.late"] = expected["edge.late"] + 1
    for back in (torch.load(small, weights_only=True), torch.load(small, weights_only=True, mmap=True)):
        assert set(back) == set(expected)
        assert all(torch.equal(back[k], v) for k, v in expected.items())
    assert read_checkpoint(small, "copy").content["edge.empty"].numel() == 0


def test_a_safetensors_state_dict_converts_without_importing_other_families(tmp_path: Path) -> None:
    # the YOLOv5 pair source claims only a .safetensors whose metadata names its format: asking a plain one (here
    # with the metadata safetensors' own writers put there) must not import YOLOv5's modules, Ultralytics, cv2, PIL
    import subprocess
    import sys

    from safetensors.torch import save_file

    src = tmp_path / "in.safetensors"
    save_file({STEM: torch.randn(16, 12, 3, 3), "model.1.conv.weight": torch.randn(8, 16, 3, 3)}, src, {"format": "pt"})
    code = (
        "import sys; from focus_surgery.files import convert_file, inspect_file; before = set(sys.modules); "
        f"inspect_file({str(src)!r}); "
        f"convert_file({str(src)!r}, {str(tmp_path / 'out.safetensors')!r}, to='conv', verify=True); "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('ultralytics', 'cv2', 'PIL') "
        "or m.startswith('focus_surgery.yolov5.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.strip().splitlines()[-1] == "['focus_surgery.yolov5.pair_format']"  # a constant, no import
    assert (tmp_path / "out.safetensors").exists()


def test_a_safetensors_file_named_in_upper_case_is_refused_naming_the_fix(tmp_path: Path) -> None:
    # the pair source and the reader both ask for '.safetensors' exactly (the output side refuses '.SAFETENSORS'
    # with "rename it"); the input was read as a torch checkpoint and refused as "not a torch checkpoint"
    from safetensors.torch import save_file

    from focus_surgery.errors import CheckpointError
    from focus_surgery.files import convert_file, inspect_file

    src = tmp_path / "in.SAFETENSORS"
    save_file({STEM: torch.randn(16, 12, 3, 3)}, src)
    before = src.read_bytes()
    for call in (lambda: inspect_file(src), lambda: convert_file(src, tmp_path / "out.pt", to="conv")):
        with pytest.raises(CheckpointError, match=r"'\.safetensors' \(lower case\): rename it") as error:
            call()
        assert "\n" not in str(error.value) and str(src) in str(error.value)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["in.SAFETENSORS"]
    zipped = tmp_path / "zip.SAFETENSORS"  # a torch checkpoint under that name still reads as one, as before
    torch.save({STEM: torch.randn(16, 12, 3, 3)}, zipped)
    assert inspect_file(zipped)


def test_a_pair_written_by_focus_surgery_is_still_claimed_by_the_pair_source(tmp_path: Path) -> None:
    from focus_surgery.files import convert_file, inspect_file

    fixture = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v2.0-d0.33-w0.125-nc3-seed104-fp16.pt"
    pair = tmp_path / "pair.safetensors"
    convert_file(fixture, pair)
    assert (tmp_path / "pair.json").is_file()
    assert inspect_file(pair)["source"] == "yolov5-safetensors"
    assert convert_file(pair, tmp_path / "back.safetensors", to="focus")["source"] == "yolov5-safetensors"
