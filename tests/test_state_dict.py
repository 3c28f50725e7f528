"""State-dict conversion through the CLI: the written weight against GUIDE section 1 written out here, ``--verify``
failing on planted bugs (exit 1, nothing written), atomic writes keeping an existing destination."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from focus_surgery import checkpoint_io, cli, orders, state_dict
from focus_surgery.sources import plain as plain_source

# GUIDE section 1, written out independently of focus_surgery.orders: output channel of (c, dy, dx)
CH = {
    "yolov5": lambda c, dy, dx, C, bs: (dx * bs + dy) * C + c,
    "timm": lambda c, dy, dx, C, bs: (dy * bs + dx) * C + c,
    "pixel_unshuffle": lambda c, dy, dx, C, bs: c * bs * bs + dy * bs + dx,
}
CASES = [(order, bs) for order in CH for bs in (2, 3)]


def focus_state_dict(bs: int, out: int = 5, k: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Focus stem (``model.0.conv.conv`` + ``model.0.conv.bn``, non-trivial statistics) and a next layer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.0.conv.conv.weight": torch.randn(out, 3 * bs * bs, k, k, generator=g),
        "model.0.conv.bn.weight": torch.rand(out, generator=g) + 0.5,
        "model.0.conv.bn.bias": torch.randn(out, generator=g),
        "model.0.conv.bn.running_mean": torch.randn(out, generator=g),
        "model.0.conv.bn.running_var": torch.rand(out, generator=g) + 0.5,
        "model.0.conv.bn.num_batches_tracked": torch.tensor(7),
        "model.1.conv.weight": torch.randn(4, out, 3, 3, generator=g),
    }


def convert(tmp_path: Path, sd: dict, *flags: str, name: str = "out.pt") -> tuple[int, Path]:
    src, dst = tmp_path / "src.pt", tmp_path / name
    torch.save(sd, src)
    return cli.main(["convert", str(src), str(dst), *flags]), dst


@pytest.mark.parametrize("order,bs", CASES)
def test_written_conv_weight_is_the_guide_formula(tmp_path, order, bs):
    """W[o, c, bs*u + dy, bs*v + dx] = w[o, ch(c, dy, dx), u, v], element by element, and --verify passes."""
    sd = focus_state_dict(bs)
    code, dst = convert(tmp_path, sd, "--to", "conv", "--order", order, "--block-size", str(bs), "--verify")
    assert code == 0
    out = torch.load(dst, weights_only=True)
    w, W = sd["model.0.conv.conv.weight"], out["model.0.conv.weight"]
    O, k = w.shape[0], w.shape[-1]
    assert W.shape == (O, 3, bs * k, bs * k)
    for c, dy, dx, u, v in itertools.product(range(3), range(bs), range(bs), range(k), range(k)):
        assert torch.equal(W[:, c, bs * u + dy, bs * v + dx], w[:, CH[order](c, dy, dx, 3, bs), u, v])
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):  # BatchNorm moved up
        assert torch.equal(out[f"model.0.bn.{name}"], sd[f"model.0.conv.bn.{name}"])
    assert torch.equal(out["model.1.conv.weight"], sd["model.1.conv.weight"])
    assert set(out) == {k.replace("model.0.conv.", "model.0.", 1) for k in sd}


@pytest.mark.parametrize("order,bs", CASES)
def test_back_to_focus_is_the_inverse_formula(tmp_path, order, bs):
    conv = {k.replace("model.0.conv.", "model.0.", 1): v for k, v in focus_state_dict(bs, seed=1).items()}
    conv["model.0.conv.weight"] = torch.randn(5, 3, 3 * bs, 3 * bs)
    code, dst = convert(tmp_path, conv, "--to", "focus", "--order", order, "--block-size", str(bs), "--verify")
    assert code == 0
    w, W = torch.load(dst, weights_only=True)["model.0.conv.conv.weight"], conv["model.0.conv.weight"]
    for c, dy, dx, u, v in itertools.product(range(3), range(bs), range(bs), range(3), range(3)):
        assert torch.equal(w[:, CH[order](c, dy, dx, 3, bs), u, v], W[:, c, bs * u + dy, bs * v + dx])


def _wrong_order(weight, block_size=2, order="yolov5"):
    return REAL_REMAP(weight, block_size, "timm" if order != "timm" else "yolov5")


def _fresh_batchnorm(sd, *args, **kwargs):
    out, stem = REAL_CONVERT(sd, *args, **kwargs)
    out = dict(out)
    out["model.0.bn.running_mean"] = torch.zeros_like(out["model.0.bn.running_mean"])
    out["model.0.bn.running_var"] = torch.ones_like(out["model.0.bn.running_var"])
    return out, stem


def _touches_another_layer(sd, *args, **kwargs):
    out, stem = REAL_CONVERT(sd, *args, **kwargs)
    return {**out, "model.1.conv.weight": out["model.1.conv.weight"] * (1 + 1e-6)}, stem


def _drops_the_bias_of_the_batchnorm(sd, *args, **kwargs):
    out, stem = REAL_CONVERT(sd, *args, **kwargs)
    return {k: v for k, v in out.items() if k != "model.0.bn.bias"}, stem


REAL_REMAP, REAL_CONVERT = state_dict.focus_to_conv_weight, state_dict.convert_state_dict
PLANTED = {  # bug -> (object, attribute, replacement)
    "remap with the wrong channel order": (state_dict, "focus_to_conv_weight", _wrong_order),
    "fresh BatchNorm statistics": (plain_source, "convert_state_dict", _fresh_batchnorm),
    "another tensor changed": (plain_source, "convert_state_dict", _touches_another_layer),
    "a BatchNorm entry lost": (plain_source, "convert_state_dict", _drops_the_bias_of_the_batchnorm),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_verify_exits_1_and_writes_nothing_on_a_planted_bug(tmp_path, monkeypatch, capsys, bug):
    target, attribute, replacement = PLANTED[bug]
    monkeypatch.setattr(target, attribute, replacement)
    code, dst = convert(tmp_path, focus_state_dict(2), "--verify")
    err = capsys.readouterr().err
    assert code == 1 and "verification failed" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]


def test_verify_sees_a_wrong_order_table_that_the_conversion_and_the_layers_share(tmp_path, monkeypatch, capsys):
    """The check runs the Focus stem by GUIDE's definition, so a wrong ``CHANNEL_LAYOUT`` cannot agree with itself."""
    monkeypatch.setitem(orders.CHANNEL_LAYOUT, "yolov5", ("y", "x", "c"))  # the timm layout under the yolov5 name
    code, dst = convert(tmp_path, focus_state_dict(2), "--verify")
    assert code == 1 and not dst.exists() and "verification failed" in capsys.readouterr().err


def test_verify_of_a_correct_conversion_measures_float64_zero(tmp_path, capsys):
    code, _ = convert(tmp_path, focus_state_dict(2), "--verify", "--json")
    import json

    report = json.loads(capsys.readouterr().out)
    stem = report["verification"]["stem"]  # the stem run before and after (the other tensors: "tensors")
    assert code == 0 and stem["dtype"] == "float64" and stem["passed"] and report["verification"]["passed"]
    assert report["max_abs_err"] <= 1e-12 * max(1.0, stem["output_scale"])
    assert stem["output_scale"] > 1  # the BatchNorm'd stem output, not zeros


# --------------------------------------------------------------------------------------------- atomic writes


def _fails_midway(tmp: str) -> None:
    Path(tmp).write_bytes(b"half a checkpoint")
    raise OSError(28, "No space left on device")


def test_failed_write_keeps_an_existing_destination(tmp_path):
    dst = tmp_path / "model.pt"
    dst.write_bytes(b"the user's previous file")
    with pytest.raises(checkpoint_io.CheckpointError, match="No space left"):  # one line naming the destination
        checkpoint_io.atomic_write(dst, _fails_midway)
    assert dst.read_bytes() == b"the user's previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_cli_write_failure_keeps_an_existing_destination(tmp_path, monkeypatch, capsys, suffix):
    src = tmp_path / "src.pt"
    torch.save(focus_state_dict(2), src)
    dst = tmp_path / f"previous{suffix}"
    dst.write_bytes(b"previous output")
    real_atomic_write = checkpoint_io.atomic_write
    monkeypatch.setattr(
        checkpoint_io, "atomic_write", lambda d, write, fsync=True: real_atomic_write(d, _fails_midway, fsync)
    )
    assert cli.main(["convert", str(src), str(dst)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert dst.read_bytes() == b"previous output" and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name, dst.name]
    )
