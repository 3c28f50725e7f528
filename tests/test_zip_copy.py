"""Conversion of a zip checkpoint that copies what it does not change (``loader.zip_rewrite``, issue 19 item 1)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery import focus_to_conv_weight
from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.errors import CheckpointError
from focus_surgery.files import convert_file
from focus_surgery.loader import read_checkpoint, zip_rewrite

STEM = "model.0.conv.conv.weight"


def _state_dict(layers: int = 6) -> dict[str, torch.Tensor]:
    sd = {STEM: torch.randn(16, 12, 3, 3)}
    for i in range(1, layers):
        sd[f"model.{i}.conv.weight"] = torch.randn(16, 16, 3, 3)
        sd[f"model.{i}.bn.running_var"] = torch.rand(16)
        sd[f"model.{i}.bn.num_batches_tracked"] = torch.tensor(i)
    return sd


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "in.pt"
    torch.save(_state_dict(), path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}


def test_untouched_records_copied_byte_for_byte(src: Path, tmp_path: Path) -> None:
    before = _digest(src)
    dst = tmp_path / "out.pt"
    report = convert_file(src, dst, to="conv", verify=True)
    assert _digest(src) == before  # the input is never modified
    write = report["write"]
    assert write["path"] == "zip-copy"
    assert write["storages_written"] == 1 and write["bytes_written"] == 16 * 12 * 9 * 4
    assert write["copied_identical"]["passed"] and write["copied_identical"]["records"] == write["records_copied"]
    old, new = _records(src), _records(dst)
    stem_key = None
    loaded = read_checkpoint(src, "mmap")
    for key, storage, _ in loaded.stats.keys.values():
        if storage.nbytes() == 16 * 12 * 9 * 4:
            stem_key = key
    untouched = [k for k in old if k.startswith("data/") and k != f"data/{stem_key}"]
    assert len(untouched) == 3 * 5
    for name in untouched:  # each untouched storage under its original key, the same bytes
        assert new[name] == old[name], name
    assert f"data/{stem_key}" not in new  # the stem's old record is not carried along
    for name in ("version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id"):
        assert new[name] == old[name]
    assert new["data.pkl"] != old["data.pkl"]
    with zipfile.ZipFile(dst) as archive:
        assert archive.testzip() is None  # every CRC-32 of the output right


def test_output_aligned_and_loads_everywhere(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.pt"
    convert_file(src, dst, to="conv")
    raw = dst.read_bytes()
    with zipfile.ZipFile(dst) as archive:
        for info in archive.infolist():
            n, e = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            assert (info.header_offset + 30 + n + e) % 64 == 0, info.filename
    expected = dict(torch.load(src, weights_only=True))
    expected["model.0.conv.weight"] = focus_to_conv_weight(expected.pop(STEM).double()).float()
    for loaded in (
        torch.load(dst, weights_only=True),
        torch.load(dst, weights_only=True, mmap=True),
        *(read_checkpoint(dst, mode).content for mode in ("copy", "mmap", "mmap-nocrc")),
    ):
        assert set(loaded) == set(expected)
        for key, value in expected.items():
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_each_copied_storage_keeps_its_key_in_the_pickle(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.pt"
    convert_file(src, dst, to="conv")
    before, after = read_checkpoint(src, "mmap"), read_checkpoint(dst, "mmap")
    by_name = []
    for loaded in (before, after):
        storage_key = {cdata: key for cdata, (key, _, _) in loaded.stats.keys.items()}
        by_name.append({n: storage_key[t.untyped_storage()._cdata] for n, t in loaded.content.items()})
    for name, key in by_name[0].items():
        if name != STEM:
            assert by_name[1][name] == key, name
    assert by_name[1]["model.0.conv.weight"] not in by_name[0].values()


def test_memory_is_the_pickle_and_the_stem(src: Path, tmp_path: Path, monkeypatch) -> None:
    read: list[int] = []
    real = zip_rewrite._storage_bytes

    def counted(storage):
        read.append(storage.nbytes())
        return real(storage)

    monkeypatch.setattr(zip_rewrite, "_storage_bytes", counted)
    loaded = read_checkpoint(src, "mmap")
    assert loaded.stats.copied_bytes == 0  # mapped views: no storage materialised by the read
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    (outcome,) = outcomes
    assert read == [16 * 3 * 6 * 6 * 4]  # only the changed stem's bytes were read from memory
    assert outcome.bytes_written == sum(read)
    others = sum(s.nbytes() for k, s, _ in loaded.stats.keys.values() if s.nbytes() != 16 * 12 * 9 * 4)
    assert outcome.bytes_copied >= others  # the rest went through the fixed buffer (kept storages: mapped views)
    assert outcome.buffer_bytes == zip_rewrite.COPY_BUFFER_BYTES


@pytest.mark.parametrize("mode", ["copy", "mmap"])
def test_no_write_call_larger_than_the_buffer(tmp_path: Path, monkeypatch, mode: str) -> None:
    # write() calls of 2-4 MiB were erratic on ext4 (0.3-1.3 s for 333 MB, 1 MiB calls 0.1 s): every record, the
    # file-copied ones, the ones from memory (mode copy) and the new stem, reaches the file in buffer-sized calls
    monkeypatch.setattr(zip_rewrite, "COPY_BUFFER_BYTES", 1000)
    sizes: list[int] = []
    real_open = zip_rewrite._open_empty

    class Counted:  # the writer's file, each write() call's size recorded
        def __init__(self, raw) -> None:
            self.raw = raw

        def write(self, data) -> int:
            sizes.append(memoryview(data).nbytes)
            return self.raw.write(data)

        def __getattr__(self, name):
            return getattr(self.raw, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.raw.close()

    monkeypatch.setattr(zip_rewrite, "_open_empty", lambda path: Counted(real_open(path)))
    src = tmp_path / "in.pt"
    torch.save(_state_dict(), src)
    loaded = read_checkpoint(src, mode)
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))  # 6,912 bytes: seven calls
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    (outcome,) = outcomes
    assert outcome.storages_written == 1 and outcome.records_copied > 10
    assert sum(s == 1000 for s in sizes) >= 6 and max(sizes) == 1000
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(got["model.0.conv.weight"], content["model.0.conv.weight"])
    assert all(torch.equal(got[k], v) for k, v in content.items())


@pytest.mark.parametrize("kind", ["legacy", "safetensors-out"])
def test_fallback_says_which_path_ran(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "in.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=kind != "legacy")
    dst = tmp_path / ("out.safetensors" if kind == "safetensors-out" else "out.pt")
    report = convert_file(path, dst, to="conv", verify=True)
    assert report["write"] == {"path": "rewritten"}
    assert report.to_dict()["write"] == {"path": "rewritten"}


def test_conversion_that_changes_most_storages_falls_back(src: Path, tmp_path: Path) -> None:
    loaded = read_checkpoint(src, "mmap")
    content = {k: v.clone() for k, v in loaded.content.items()}  # every storage new: nothing to copy
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    assert outcomes == []
    assert set(torch.load(tmp_path / "out.pt", weights_only=True)) == set(content)


def test_zip64_fields_read_by_torch_and_zipfile(src: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(zip_rewrite, "ZIP64_LIMIT", 500)  # every offset past 500 bytes written as zip64
    dst = tmp_path / "out.pt"
    report = convert_file(src, dst, to="conv", verify=True)
    assert report["write"]["path"] == "zip-copy"
    with zipfile.ZipFile(dst) as archive:
        assert archive.testzip() is None
    a, b = torch.load(dst, weights_only=True), torch.load(dst, weights_only=True, mmap=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the new read path: the input as it is copied


def _central_entry(raw: bytes, name_end: str) -> int:
    """Offset of the central directory entry whose name ends with ``name_end``."""
    at = raw.index(b"PK\x01\x02")
    while raw[at : at + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack("<HHH", raw[at + 28 : at + 34])
        if raw[at + 46 : at + 46 + n].decode().endswith(name_end):
            return at
        at += 46 + n + e + c
    raise AssertionError(name_end)


def _corrupt_crc(raw: bytearray, first_storage: str) -> None:
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(first_storage))
    n, e = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + n + e] ^= 0xFF


def _hostile(raw: bytearray, case: str, kept: str, other: str) -> bytes:
    if case == "crc":
        _corrupt_crc(raw, kept)
    elif case == "truncated":
        return bytes(raw[: len(raw) // 2])
    elif case == "overlap":  # one record's header offset pointed at another's
        a, b = _central_entry(raw, kept), _central_entry(raw, other)
        raw[b + 42 : b + 46] = raw[a + 42 : a + 46]
    elif case == "duplicate":  # two central entries of one name
        a, b = _central_entry(raw, kept), _central_entry(raw, other)
        n = struct.unpack("<H", raw[a + 28 : a + 30])[0]
        if struct.unpack("<H", raw[b + 28 : b + 30])[0] == n:
            raw[b + 46 : b + 46 + n] = raw[a + 46 : a + 46 + n]
        else:
            raise AssertionError("names of different lengths")
    elif case == "huge":  # a declared size far beyond the file
        a = _central_entry(raw, kept)
        raw[a + 20 : a + 28] = struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)
    return bytes(raw)


_EXPECTED = {
    "crc": "fails its CRC-32 check",
    "truncated": "not a zip archive any more",
    "overlap": "overlap",
    "duplicate": "two records named",
    "huge": "more than the whole file",
    "unreferenced": "is not a storage of its pickle",
}


@pytest.mark.parametrize("case", ["crc", "truncated", "overlap", "duplicate", "huge", "unreferenced"])
def test_hostile_input_at_copy_time_refused_nothing_written(src: Path, tmp_path: Path, case: str) -> None:
    loaded = read_checkpoint(src, "mmap")  # read while good; the file is replaced before it is copied
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    keys = sorted((k for k, s, _ in loaded.stats.keys.values() if s.nbytes() != 16 * 12 * 9 * 4), key=int)
    kept, other = f"data/{keys[1]}", f"data/{keys[2]}"
    hostile = tmp_path / "hostile.pt"
    if case == "unreferenced":  # a storage record no pickle entry names
        hostile.write_bytes(src.read_bytes())
        with zipfile.ZipFile(hostile, "a") as archive:
            prefix = archive.infolist()[0].filename.split("/")[0]
            archive.writestr(f"{prefix}/data/999", b"\0" * 64)
    else:
        hostile.write_bytes(_hostile(bytearray(src.read_bytes()), case, kept, other))
    os.replace(hostile, src)  # the mapping of the good file stays valid; the path now names the hostile one
    before = _digest(src)
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(content, dst, like=loaded)
    message = str(error.value)
    assert _EXPECTED[case] in message
    assert "\n" not in message and str(src) in message
    assert list(dst.parent.iterdir()) == []  # nothing written, no temporary left
    assert _digest(src) == before


@pytest.mark.parametrize("record", ["data/0", "data/3"])  # the stem's (replaced, not copied), another (copied)
def test_corrupt_record_refused_by_the_pipeline(src: Path, tmp_path: Path, monkeypatch, record: str) -> None:
    with zipfile.ZipFile(src) as archive:
        stem_bytes = archive.getinfo(archive.infolist()[0].filename.split("/")[0] + "/data/0").file_size
    assert stem_bytes == 16 * 12 * 9 * 4  # data/0 is the stem: torch numbers storages as the pickle meets them
    raw = bytearray(src.read_bytes())
    _corrupt_crc(raw, record)
    src.write_bytes(bytes(raw))
    before = _digest(src)
    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", "mmap-nocrc")  # the load does not check storages' CRC-32s
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        convert_file(src, dst, to="conv")
    assert list(dst.parent.iterdir()) == [] and _digest(src) == before


# ---------------------------------------------------------------- the proof: copied records, stem-only option


def test_check_copied_finds_a_changed_byte(src: Path, tmp_path: Path) -> None:
    loaded = read_checkpoint(src, "mmap")
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    out = tmp_path / "out.pt"
    outcome = zip_rewrite.write_copying(content, out, loaded)
    assert zip_rewrite.check_copied(outcome, out)["passed"]
    raw = bytearray(out.read_bytes())
    _corrupt_crc(raw, "data/3")
    out.write_bytes(bytes(raw))
    check = zip_rewrite.check_copied(outcome, out)
    assert not check["passed"] and "data/3" in check["problem"]


def _ultralytics_file(tmp_path: Path) -> Path:
    from ultralytics import YOLO

    path = tmp_path / "u.pt"
    YOLO(str(Path(__file__).parent / "fixtures" / "yolo-focus-tiny.yaml")).save(path)
    return path


def test_proof_model_by_default_stem_on_request(tmp_path: Path) -> None:
    from ultralytics import YOLO

    path = _ultralytics_file(tmp_path)
    model = convert_file(path, tmp_path / "m.pt", to="conv", verify=True)
    assert model.proof == "model" and model["write"]["path"] == "zip-copy"
    stem = convert_file(path, tmp_path / "s.pt", to="conv", verify=True, proof="stem")
    assert (
        stem.proof == "stem" and stem["verification"]["passed"] and stem["verification"]["stems"] == ["model:model.0"]
    )
    assert stem["max_abs_err"] < 1e-12
    assert stem["write"]["copied_identical"]["passed"]
    assert stem["verification"]["tensors"]["passed"]  # every other tensor of the written file, bit for bit
    for out in ("m.pt", "s.pt"):  # the family's own loader reads the copied archive
        row = YOLO(str(tmp_path / out)).model.model[0]
        assert tuple(row.conv.kernel_size) == (6, 6) and tuple(row.conv.stride) == (2, 2)


def test_proof_stem_fails_on_a_wrongly_written_stem(tmp_path: Path, monkeypatch) -> None:
    """The in-memory check passes; the stem bytes written are wrong: the read-back stem proof refuses the file."""
    from focus_surgery.errors import VerificationFailed

    path = _ultralytics_file(tmp_path)
    real = zip_rewrite._storage_bytes

    def reversed_values(storage):
        values = torch.empty((0,), dtype=torch.uint8).set_(storage)
        if storage.nbytes() >= 16 * 3 * 6 * 6 * 2:  # the stem weight (float16 in an Ultralytics file)
            values = values.view(torch.int16).flip(0).view(torch.uint8)
            return memoryview(values.numpy()).cast("B")
        return real(storage)

    monkeypatch.setattr(zip_rewrite, "_storage_bytes", reversed_values)
    with pytest.raises(VerificationFailed) as error:
        convert_file(path, tmp_path / "s.pt", to="conv", verify=True, proof="stem")
    assert error.value.report.proof == "stem" and error.value.report.max_abs_err > 1e-3  # the stem run caught it
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("options", [{"proof": "stem"}, {"proof": "all", "verify": True}])
def test_proof_option_refused_where_it_means_nothing(src: Path, tmp_path: Path, options: dict) -> None:
    from focus_surgery.errors import ConversionError

    with pytest.raises(ConversionError, match="--proof"):
        convert_file(src, tmp_path / "out.pt", to="conv", **options)
    assert not (tmp_path / "out.pt").exists()


def test_bench_convert_is_the_zip_copy_and_rewrite_is_not(src: Path, tmp_path: Path) -> None:
    """``focus-surgery bench``: ``convert`` times the CLI's writer (the zip copy), ``convert-rewrite`` torch.save's."""
    from focus_surgery.speed.bench import convert_once

    for kind, copies in (("convert", 1), ("convert-verify", 1), ("convert-rewrite", 0), ("convert-no-fsync", 1)):
        dst = tmp_path / f"{kind}.pt"
        with zip_rewrite.recording() as outcomes:
            result = convert_once(kind, src, dst)
        assert len(outcomes) == copies, kind
        assert result["peak_anon"] >= 0 and result["seconds"] > 0
        assert torch.load(dst, weights_only=True, mmap=True)["model.0.conv.weight"].shape == (16, 3, 6, 6)


def test_work_is_linear_in_the_number_of_storages(tmp_path: Path) -> None:
    """Each kept storage's size is looked up, not searched for: a file of N storages costs O(N) visits of the read's
    storages (one search per kept storage was N**2: 36 million visits for a 6,000-tensor checkpoint)."""
    n = 1500
    path = tmp_path / "many.pt"
    torch.save({f"t{i}": torch.full((4,), float(i)) for i in range(n)} | {STEM: torch.randn(16, 12, 3, 3)}, path)
    loaded = read_checkpoint(path, "mmap-nocrc")
    visits = [0]

    class CountingKeys(dict):
        def values(self):
            for value in super().values():
                visits[0] += 1
                yield value

    loaded.stats.keys = CountingKeys(loaded.stats.keys)
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    assert outcomes and outcomes[0].records_copied >= n
    assert visits[0] <= 10 * (n + 1), visits[0]


def test_written_over_a_longer_file_leaves_none_of_it(src: Path, tmp_path: Path) -> None:
    """The writer opens its file without truncating an empty one (ext4 flushes a file truncated to nothing when it is
    closed); a file that is not empty is still cut to what is written."""
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    content["model.0.conv.weight"] = focus_to_conv_weight(content.pop(STEM))
    fresh, reused = tmp_path / "fresh.pt", tmp_path / "reused.pt"
    reused.write_bytes(b"\xff" * (3 * src.stat().st_size))
    for dst in (fresh, reused):
        assert zip_rewrite.write_copying(content, dst, loaded) is not None
    assert reused.read_bytes() == fresh.read_bytes()
    assert torch.equal(torch.load(reused, weights_only=True)["model.0.conv.weight"], content["model.0.conv.weight"])


def test_a_state_dict_converts_without_importing_other_families(src: Path, tmp_path: Path) -> None:
    # every source is asked whether it claims the file: asking must not import YOLOv5's modules (and with them
    # Ultralytics, cv2 and PIL: 0.15 s of every plain conversion, the first in each folder worker)
    import subprocess
    import sys

    code = (
        "import sys; from focus_surgery.files import convert_file; before = set(sys.modules); "
        f"convert_file({str(src)!r}, {str(tmp_path / 'out.pt')!r}, to='conv', verify=True); "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('ultralytics', 'cv2', 'PIL') "
        "or m.startswith('focus_surgery.yolov5')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"

