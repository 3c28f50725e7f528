"""timm ``train.py`` checkpoints (``last.pth.tar``) of a TResNet: a weightless space-to-depth stem found from the file's
own evidence (``arch`` looked up in timm's registry), converted to the 12x12/4 conv timm's model holds, under timm's
own keys, loaded by timm's own ``load_checkpoint`` / ``resume_checkpoint``, compared in float64 with the original."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import focus_surgery as fs
from focus_surgery.errors import ConversionError
from focus_surgery.files import convert_file, inspect_file, verify_files

timm = pytest.importorskip("timm")
from timm.models import load_checkpoint, resume_checkpoint  # noqa: E402
from timm.optim import create_optimizer_v2, optimizer_kwargs  # noqa: E402
from timm.utils.checkpoint_saver import load_checkpoint_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "timm-train"
SRC = FIXTURES / "last.pth.tar"
STEM = "body.conv1.conv.weight"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURES / "last.ref.npz"))


@pytest.fixture(scope="module")
def args() -> argparse.Namespace:
    return load_checkpoint_metadata(str(SRC))["args"]  # timm's own reader


def tresnet(args: argparse.Namespace, form: str = "s2d") -> torch.nn.Module:
    """timm's model as train.py built it; ``form="conv"``: its stem folded into one conv by ``fs.convert``."""
    model = timm.create_model(args.model, num_classes=args.num_classes, **args.model_kwargs)
    if form == "conv":
        fs.convert(model, to="conv")
        conv = model.body.conv1.conv
        assert (conv.kernel_size, conv.stride, conv.padding) == ((12, 12), (4, 4), (4, 4))
    return model


def outputs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double().eval()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    before = digest(SRC)
    dst = tmp_path_factory.mktemp("timm") / "conv.pth.tar"  # timm's own suffix
    report = convert_file(SRC, dst, verify=True)
    assert digest(SRC) == before  # the input is never modified
    return dst, report.to_dict()


def test_the_file_names_its_architecture_and_timm_says_the_geometry(converted):
    _, report = converted
    assert report["block_size"] == 4 and report["order"] == "timm"
    assert "arch 'tresnet_m'" in report["geometry_from"] and "body.s2d" in report["geometry_from"]
    assert report["weight_key"] == STEM and report["from"] == "reorg"
    assert report["converted"] == ["state_dict", "state_dict_ema"]  # the model and its EMA: every copy
    assert report["verification"]["passed"] and report["max_abs_err"] < 1e-12
    assert "file's own" in report["assumes"]


@pytest.mark.parametrize("use_ema", [False, True], ids=["state_dict", "state_dict_ema"])
def test_timm_load_checkpoint_loads_both_copies_into_the_conv_form(converted, args, ref, use_ema):
    dst, _ = converted
    model = tresnet(args, "conv")
    load_checkpoint(model, str(dst), use_ema=use_ema, strict=True)  # timm's defaults: weights_only=True
    expected = ref["output_state_dict_ema_float64" if use_ema else "output_state_dict_float64"]
    err = np.abs(outputs(model, ref["input"]) - expected).max()
    assert err <= 1e-12 * np.abs(expected).max(), err
    assert model.body.conv1.conv.weight.shape == (8, 3, 12, 12)


def test_the_output_adds_no_pickle_global_and_keeps_the_training_state(converted):
    dst, _ = converted
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(dst)) == ["argparse.Namespace"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(SRC)) == ["argparse.Namespace"]
    new, old = load_checkpoint_metadata(str(dst)), load_checkpoint_metadata(str(SRC))
    assert (
        list(new) == list(old)
        and isinstance(new["args"], argparse.Namespace)
        and vars(new["args"]) == vars(old["args"])
    )
    for key in ("epoch", "arch", "version", "metric", "saver"):
        assert new[key] == old[key]
    for place in ("state_dict", "state_dict_ema"):
        assert list(new[place]) == list(old[place])  # timm's keys, in timm's order
        assert all(torch.equal(new[place][k], old[place][k]) for k in old[place] if k != STEM)
        assert torch.equal(new[place][STEM], fs.focus_to_conv_weight(old[place][STEM], 4, "timm"))


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    model.train()
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()


def test_timm_resume_checkpoint_continues_training_exactly(converted, args, ref):
    """Resume both files as train.py does (its optimizer, its resume_checkpoint), take one step on each in float64:
    the stem's momentum buffer was permuted like its weight, so both models stay the same function."""
    dst, _ = converted
    runs = []
    for path, form in ((SRC, "s2d"), (dst, "conv")):
        model = tresnet(args, form).double()
        optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))  # train.py's optimizer
        assert resume_checkpoint(model, str(path), optimizer=optimizer) == 1  # the next epoch, as train.py resumes
        stem = model.body.conv1.conv.weight
        momentum = optimizer.state[stem]["momentum_buffer"]
        assert momentum.shape == stem.shape
        runs.append((model, optimizer, momentum.clone()))
    (s2d, _, m_s2d), (conv, _, m_conv) = runs
    assert torch.equal(m_conv, fs.focus_to_conv_weight(m_s2d, 4, "timm"))
    x = torch.from_numpy(ref["input"])
    for model, optimizer, _ in runs:
        _train_step(model, optimizer, x)
    stem_after = fs.focus_to_conv_weight(s2d.body.conv1.conv.weight.detach(), 4, "timm")
    assert (stem_after - conv.body.conv1.conv.weight.detach()).abs().max() < 1e-14
    a, b = outputs(s2d, ref["input"]), outputs(conv, ref["input"])
    assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max()


def test_round_trip_restores_timm_keys_and_loads_strictly_into_tresnet(converted, args, ref, tmp_path):
    dst, _ = converted
    back = tmp_path / "back.pth.tar"
    report = convert_file(dst, back, to="focus", verify=True).to_dict()
    assert report["from"] == "conv" and report["order"] == "timm" and report["block_size"] == 4
    new, old = load_checkpoint_metadata(str(back)), load_checkpoint_metadata(str(SRC))
    for place in ("state_dict", "state_dict_ema"):
        assert list(new[place]) == list(old[place]) and "body.conv1.conv.conv.weight" not in new[place]
        assert all(torch.equal(new[place][k], old[place][k]) for k in old[place])  # bit for bit
    for pid, state in old["optimizer"]["state"].items():
        assert all(torch.equal(new["optimizer"]["state"][pid][k], v) for k, v in state.items())
    for use_ema, key in ((False, "output_state_dict_float64"), (True, "output_state_dict_ema_float64")):
        model = tresnet(args)
        load_checkpoint(model, str(back), use_ema=use_ema, strict=True)
        assert np.array_equal(outputs(model, ref["input"]), ref[key])
    assert verify_files(SRC, back)["passed"]


@pytest.mark.parametrize(
    "options",
    [{"order": "yolov5"}, {"order": "pixel_unshuffle"}, {"block_size": 2}, {"block_size": 4, "order": "yolov5"}],
)
def test_a_stated_geometry_that_contradicts_the_named_architecture_is_refused(options, tmp_path):
    dst = tmp_path / "x.pth.tar"
    with pytest.raises(ConversionError, match=r"contradicts the file, which names its arch 'tresnet_m'"):
        convert_file(SRC, dst, **options)
    assert not dst.exists()


def test_a_stated_geometry_that_agrees_with_the_architecture_is_accepted(converted, tmp_path):
    dst = tmp_path / "x.pth"
    convert_file(SRC, dst, block_size=4, order="timm")
    assert torch.load(dst, weights_only=False)["state_dict"][STEM].shape == (8, 3, 12, 12)


def _without_arch(tmp_path: Path, top_level: bool) -> Path:
    """The same weights with nothing that names the architecture (a bare state dict, or a wrapper without arch)."""
    ckpt = torch.load(SRC, weights_only=False)
    path = tmp_path / "bare.pth"
    torch.save(ckpt["state_dict"] if top_level else {"state_dict": ckpt["state_dict"], "epoch": 0}, path)
    return path


@pytest.mark.parametrize("top_level", [True, False], ids=["top_level", "wrapped"])
def test_without_an_architecture_the_order_is_asked_for_not_assumed(top_level, tmp_path):
    src, dst = _without_arch(tmp_path, top_level), tmp_path / "out.pth"
    with pytest.raises(ConversionError, match=r"reads 48 = 3 x 4 x 4 channels.*give --order"):
        convert_file(src, dst, verify=True)
    assert not dst.exists()
    report = convert_file(src, dst, order="timm", verify=True).to_dict()  # the block size: from the channel count
    assert report["block_size"] == 4 and "channel count" in report["geometry_from"]
    sd = torch.load(dst, weights_only=True)
    sd = sd if top_level else sd["state_dict"]
    expected = fs.focus_to_conv_weight(torch.load(SRC, weights_only=False)["state_dict"][STEM], 4, "timm")
    assert torch.equal(sd[STEM], expected)


def test_the_command_line_refuses_in_one_line_and_writes_pth_tar(tmp_path):
    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "focus_surgery", *map(str, argv)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )

    refused = run("convert", SRC, tmp_path / "a.pth.tar", "--order", "yolov5")
    assert (
        refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--order yolov5 contradicts" in refused.stderr
    )
    assert not (tmp_path / "a.pth.tar").exists()
    done = run("convert", SRC, tmp_path / "a.pth.tar", "--verify")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.pth.tar").is_file()
    unknown = run("convert", SRC, tmp_path / "a.tar")
    assert unknown.returncode == 2 and "unknown output type '.tar'" in unknown.stderr and ".pth.tar" in unknown.stderr


def test_inspect_and_verify_read_the_nested_state_dicts(converted):
    dst, _ = converted
    info = inspect_file(SRC)
    assert (
        info["tensors"] == 98 and info["wrapper"] == "state_dict" and (info["block_size"], info["order"]) == (4, "timm")
    )
    assert info["stems"][0]["form"] == "reorg" and info["stems"][0]["converts_to"] == "conv"
    assert "from the file's arch 'tresnet_m'" in info["summary"]
    info = inspect_file(dst)
    assert info["stems"][0]["form"] == "conv" and info["stems"][0]["converts_to"] == "focus"
    same = verify_files(SRC, SRC)
    assert same["passed"] and same["tensors"] == 2 * 98  # state_dict and state_dict_ema (rev-timm)


def test_a_folder_of_timm_checkpoints_is_converted(tmp_path):
    src_dir, out_dir = tmp_path / "runs", tmp_path / "out"
    (src_dir / "exp").mkdir(parents=True)
    (src_dir / "exp" / "last.pth.tar").write_bytes(SRC.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", src_dir, out_dir, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    written = out_dir / "exp" / "last.pth.tar"
    assert torch.load(written, weights_only=False)["state_dict_ema"][STEM].shape == (8, 3, 12, 12)


def _s2d_model_checkpoint(path: Path, name: str, kwargs: dict) -> tuple[torch.nn.Module, argparse.Namespace]:
    """A checkpoint of one of the ``*_s2d`` models in timm's registry, written by timm's ``CheckpointSaver`` after a
    step of train.py's optimizer, with timm's ``ModelEmaV3`` (as train.py's ``--model-ema``)."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    args = argparse.Namespace(
        model=name, model_kwargs=kwargs, num_classes=3, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    model = timm.create_model(name, num_classes=3, **kwargs)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    ema = ModelEmaV3(model, decay=0.5)
    _train_step(model, optimizer, torch.rand(2, 3, 32, 32))
    ema.update(model)
    saver = CheckpointSaver(
        model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(path), recovery_dir=str(path)
    )
    saver.save_checkpoint(epoch=0)
    return model, args


TINY_RESNET = dict(layers=[1, 1, 1, 1], channels=(8, 16, 16, 16), stem_width=8)
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16))


@pytest.mark.parametrize(
    "name, kwargs, bs, order, key",
    [
        ("resnet18_s2d", TINY_RESNET, 4, "timm", "conv1.1.weight"),
        ("resnet18_s2d_focus", TINY_RESNET, 2, "yolov5", "conv1.1.weight"),
        ("convnext_atto_s2d_focus", TINY_CONVNEXT, 2, "yolov5", "stem.1.weight"),  # a stride-2 conv after it
    ],
)
def test_the_s2d_models_in_timms_registry(name, kwargs, bs, order, key, tmp_path):
    """Their stem conv is a bare ``conv1.1`` / ``stem.1`` (no ``.conv.weight`` layout to recognise): the architecture
    says it all."""
    model, args = _s2d_model_checkpoint(tmp_path, name, kwargs)
    src, dst = tmp_path / "last.pth.tar", tmp_path / "conv.pth.tar"
    report = convert_file(src, dst, verify=True).to_dict()
    assert (report["block_size"], report["order"], report["weight_key"]) == (bs, order, key)
    assert report["converted"] == ["state_dict", "state_dict_ema"] and report["verification"]["passed"]
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    for use_ema in (False, True):
        original = timm.create_model(name, num_classes=3, **args.model_kwargs)
        load_checkpoint(original, str(src), use_ema=use_ema, strict=True)
        folded = timm.create_model(name, num_classes=3, **args.model_kwargs)
        fs.convert(folded, to="conv")
        load_checkpoint(folded, str(dst), use_ema=use_ema, strict=True)
        a, b = outputs(original, x.numpy()), outputs(folded, x.numpy())
        assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max()
    back = tmp_path / "back.pth.tar"
    convert_file(dst, back, to="focus")
    for place in ("state_dict", "state_dict_ema"):
        old, new = torch.load(src, weights_only=False)[place], torch.load(back, weights_only=False)[place]
        assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in old)


def test_verify_compares_the_original_with_its_conversion_and_sees_a_wrong_order(converted, tmp_path):
    dst, _ = converted
    for a, b in ((SRC, dst), (dst, SRC)):
        result = verify_files(a, b)
        assert result["passed"] and result["tensors"] == 2 * 98 and "order timm" in result["compared"]
    ckpt = torch.load(dst, weights_only=False)
    original = torch.load(SRC, weights_only=False)["state_dict"][STEM]
    ckpt["state_dict"][STEM] = fs.focus_to_conv_weight(original, 4, "yolov5")  # the order TResNet does not use
    wrong = tmp_path / "wrong-order.pth.tar"
    torch.save(ckpt, wrong)
    result = verify_files(SRC, wrong)
    assert not result["passed"] and result["problem"] == "tensors differ"


def test_a_planted_remap_bug_fails_the_check_and_writes_nothing(monkeypatch, tmp_path):
    import focus_surgery.state_dict as state_dict
    from focus_surgery.errors import VerificationFailed

    real = state_dict.focus_to_conv_weight
    monkeypatch.setattr(state_dict, "focus_to_conv_weight", lambda w, bs, order: real(w, bs, "pixel_unshuffle"))
    dst = tmp_path / "x.pth.tar"
    with pytest.raises(VerificationFailed):
        convert_file(SRC, dst, verify=True)
    assert not dst.exists()


def test_ddp_prefixed_keys_are_found_and_timm_strips_them_when_it_loads(args, ref, tmp_path):
    ckpt = torch.load(SRC, weights_only=False)
    ckpt["state_dict"] = {f"module.{k}": v for k, v in ckpt["state_dict"].items()}  # saved without unwrap_model
    src, dst = tmp_path / "ddp.pth.tar", tmp_path / "conv.pth.tar"
    torch.save(ckpt, src)
    report = convert_file(src, dst, verify=True).to_dict()
    assert report["weight_key"] == f"module.{STEM}" and report["converted"] == ["state_dict", "state_dict_ema"]
    model = tresnet(args, "conv")
    load_checkpoint(model, str(dst), use_ema=False, strict=True)
    expected = ref["output_state_dict_float64"]
    assert np.abs(outputs(model, ref["input"]) - expected).max() <= 1e-12 * np.abs(expected).max()


def test_an_architecture_timm_does_not_know_is_named_when_the_order_is_asked_for(tmp_path):
    ckpt = torch.load(SRC, weights_only=False)
    ckpt["arch"] = ckpt["args"].model = "my_private_tresnet"
    src = tmp_path / "private.pth.tar"
    torch.save(ckpt, src)
    with pytest.raises(ConversionError, match=r"names arch 'my_private_tresnet', which the installed timm does not"):
        convert_file(src, tmp_path / "out.pth.tar")
    assert convert_file(src, tmp_path / "out.pth.tar", order="timm")["block_size"] == 4


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("tresnet_m", ("body.s2d", "body.conv1.conv.weight", 4, "timm", (3, 3), (1, 1))),
        ("tresnet_v2_l", ("body.s2d", "body.conv1.conv.weight", 4, "timm", (3, 3), (1, 1))),
        ("tresnet_m.miil_in21k", ("body.s2d", "body.conv1.conv.weight", 4, "timm", (3, 3), (1, 1))),  # a tag
        ("resnet18_s2d", ("conv1.0", "conv1.1.weight", 4, "timm", (3, 3), (1, 1))),
        ("convnext_atto_s2d", ("stem.0", "stem.1.weight", 4, "timm", (3, 3), (1, 1))),
        ("resnet18_s2d_focus", ("conv1.0", "conv1.1.weight", 2, "yolov5", (3, 3), (1, 1))),
        ("convnext_atto_s2d_focus", ("stem.0", "stem.1.weight", 2, "yolov5", (3, 3), (1, 1))),  # conv of stride 2
        ("resnet50", None),  # a strided conv stem: nothing weightless to tell
        ("no_such_model", None),
    ],
)
def test_the_architecture_is_looked_up_in_timms_registry(arch, expected):
    from focus_surgery.integrations.timm_arch import arch_stem

    found = arch_stem(arch)
    got = found and (found.s2d_path, found.weight_key, found.block_size, found.order, found.kernel, found.padding)
    assert got == expected


def test_multi_part_suffixes():
    from focus_surgery.sources.base import suffix_of

    known = (".pt", ".pth", ".pth.tar")
    assert suffix_of(Path("runs/last.pth.tar"), known) == ".pth.tar"
    assert suffix_of(Path("runs/LAST.PTH.TAR"), known) == ".pth.tar"
    assert suffix_of(Path("runs/last.tar"), known) == ".tar"
    assert suffix_of(Path("runs/.pth.tar"), known) == ".tar"  # a hidden file named '.pth', suffix '.tar'
    assert suffix_of(Path("model.v2.pt"), known) == ".pt"


def test_nothing_to_do_and_fastest_are_refused_in_one_line(converted, tmp_path):
    dst, _ = converted
    out = tmp_path / "again.pth.tar"
    with pytest.raises(ConversionError, match=r"already in conv form \(under 'state_dict'\)"):
        convert_file(dst, out)
    assert not out.exists()
    _s2d_model_checkpoint(tmp_path, "resnet18_s2d", TINY_RESNET)  # conv1.1: no layout --to fastest knows
    with pytest.raises(ConversionError, match=r"--to fastest times .* \(conv1.1.weight\) converts --to conv or"):
        convert_file(tmp_path / "last.pth.tar", out, to="fastest")
    assert not out.exists()
