"""Strict import / export of the original state dicts (``jax_cer.models.convert``)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jax_cer import statedict
from jax_cer.models import (
    StateDictError,
    build_model,
    from_original_state_dict,
    load_state_dict_file,
    to_original_state_dict,
    torch_entries,
)
from jax_cer.models.convert import HEAD_KEYS, _infer_config
from jax_cer.parity.weights import draw_state_dict
from tests.conftest import IR50_PARAMS, STATE_DICT_ENTRIES, TRAINABLE, read_tsv

FUSION = ("lfan", "can", "mt", "jmt")


def _entries(name: str, **config):
    return torch_entries(nnx.eval_shape(lambda: build_model(name, **config)))


def _draw(name: str, seed: int = 0, **config) -> dict[str, np.ndarray]:
    return draw_state_dict([(e.key, e.torch_shape, e.torch_dtype) for e in _entries(name, **config)], seed)


@pytest.mark.parametrize("name", FUSION)
def test_key_table_matches_original_listing(name: str) -> None:
    """Keys, shapes and dtypes equal the original's state_dict listing, in the original order."""
    rows = read_tsv(name)
    ours = [(e.key, str(list(e.torch_shape)), e.torch_dtype) for e in _entries(name)]
    assert len(ours) == STATE_DICT_ENTRIES[name]
    assert ours == rows


@pytest.mark.parametrize("name", FUSION)
@pytest.mark.parametrize("k", [7, 2])
def test_trainable_parameter_counts(name: str, k: int) -> None:
    """Spec §4.4: trainable parameters, backbone excluded, weight-norm duplicates counted once."""
    entries = _entries(name, num_classes=k)
    n = sum(
        math.prod(e.torch_shape)
        for e in entries
        if e.trainable and e.alias_of is None and not e.key.startswith("spatial.")
    )
    assert n == TRAINABLE[name][k]


def test_ir50_keys_and_count() -> None:
    entries = _entries("ir50")
    assert sum(e.key.startswith("backbone.") for e in entries) == 349
    assert [e.key for e in entries if not e.key.startswith("backbone.")] == ["logits.weight", "logits.bias"]
    assert sum(math.prod(e.torch_shape) for e in entries if e.trainable) == IR50_PARAMS
    fc = next(e for e in entries if e.key == "backbone.output_layer.3.weight")
    assert fc.torch_shape == (512, 12800)


@pytest.mark.parametrize("name", ["tcn", "ir50", "lfan", "can", "mt", "jmt"])
def test_round_trip_is_identity(name: str) -> None:
    sd = _draw(name, seed=3)
    model = from_original_state_dict(name, sd)
    out = to_original_state_dict(model)
    assert list(out) == list(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
        np.testing.assert_array_equal(out[k], v, err_msg=k)
    again = from_original_state_dict(name, out)
    a, b = nnx.state(model), nnx.state(again)
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b), strict=True):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def test_num_classes_read_from_checkpoint() -> None:
    sd = _draw("can", num_classes=2)
    assert from_original_state_dict("can", sd).config.num_classes == 2
    with pytest.raises(StateDictError, match=r"fc2.weight: shape \[2, 384\], expected \[7, 384\]"):
        from_original_state_dict("can", sd, num_classes=7)


def test_tcn_channels_read_from_checkpoint() -> None:
    sd = _draw("tcn", num_inputs=128, channels=(64, 64, 32))
    model = from_original_state_dict("tcn", sd)
    assert model.config.channels == (64, 64, 32) and model.config.num_inputs == 128


@pytest.mark.parametrize(
    ("drop", "block"),
    [
        (r"network\.0\.(conv1|net\.0)\.weight_v", 0),  # the key and its duplicate
        (r"network\.2\.(conv1|net\.0)\.weight_v", 2),
        (r"network\.1\..*", 1),  # a whole block between two others
    ],
)
def test_tcn_configuration_key_is_named_first(drop: str, block: int) -> None:
    """The TCN's channels, input size and kernel size are read from each block's conv1.weight_v: without
    it the error names that key, instead of building defaults and listing every other key as misshapen."""
    sd = _draw("tcn", num_inputs=4, channels=(8, 8, 6))
    sd = {k: v for k, v in sd.items() if not re.fullmatch(drop, k)}
    with pytest.raises(StateDictError) as err:
        from_original_state_dict("tcn", sd)
    assert str(err.value) == (
        f"state dict does not match model 'tcn': missing key network.{block}.conv1.weight_v "
        "(the configuration is read from it)"
    )


def test_tcn_configuration_key_without_three_axes() -> None:
    sd = {**_draw("tcn", num_inputs=4, channels=(8,)), "network.0.conv1.weight_v": np.zeros(5, np.float32)}
    with pytest.raises(StateDictError) as err:
        from_original_state_dict("tcn", sd)
    assert str(err.value) == (
        "state dict does not match model 'tcn': network.0.conv1.weight_v has shape [5], expected "
        "[out_channels, in_channels, kernel_size] (the configuration is read from it)"
    )


def test_tcn_configuration_read_from_the_duplicate() -> None:
    """conv1.weight_v missing but its duplicate net.0.weight_v present: the configuration is read from the
    duplicate and the error lists the one missing key."""
    sd = _draw("tcn", num_inputs=4, channels=(8, 6))
    del sd["network.0.conv1.weight_v"]
    with pytest.raises(StateDictError) as err:
        from_original_state_dict("tcn", sd)
    problems = str(err.value).splitlines()[1:-1]
    assert problems == ["  missing keys (1): ['network.0.conv1.weight_v']"]
    assert "TCNConfig({'num_inputs': 4, 'channels': (8, 6)," in str(err.value)


@pytest.mark.parametrize("name", [*FUSION, "ir50"])
def test_head_size_read_from_weight_or_bias(name: str) -> None:
    """num_classes (num_head_classes for ir50) is read from the head's weight, else its bias (real keys
    of the original listings); a head weight without axes is left to the strict check (no IndexError)."""
    weight = HEAD_KEYS.get(name, "logits.weight")
    bias = weight.removesuffix("weight") + "bias"
    keys = [row[0] for row in read_tsv(name if name in FUSION else "can")]
    prefix = "" if name in FUSION else "spatial.visual."  # the IR-50 inside every fusion model
    assert prefix + weight in keys and prefix + bias in keys
    field = "num_head_classes" if name == "ir50" else "num_classes"
    assert _infer_config(name, {weight: np.zeros((3, 4)), bias: np.zeros(3)}, {}, "x")[field] == 3
    assert _infer_config(name, {bias: np.zeros(2)}, {}, "x")[field] == 2
    assert field not in _infer_config(name, {weight: np.zeros(())}, {}, "x")
    assert _infer_config(name, {bias: np.zeros(2)}, {field: 5}, "x")[field] == 5


def test_missing_head_weight_is_the_only_problem() -> None:
    """A 2-class CAN without fc2.weight: built with 2 classes (from fc2.bias), one missing key, no shape error."""
    sd = {
        e.key: np.zeros(e.torch_shape, np.int64 if e.torch_dtype == "int64" else np.float32)
        for e in _entries("can", num_classes=2)
    }
    del sd["fc2.weight"]
    with pytest.raises(StateDictError) as err:
        from_original_state_dict("can", sd)
    assert str(err.value).splitlines()[1] == "  missing keys (1): ['fc2.weight']"
    assert "shape" not in str(err.value) and "'num_classes': 2" in str(err.value)


def test_every_problem_is_named_at_once() -> None:
    sd = _draw("can")
    del sd["fc1.bias"]
    sd["fc9.weight"] = np.zeros(3, np.float32)
    sd["bn1.running_mean"] = np.zeros(5, np.float32)
    sd["fc2.bias"] = np.zeros(7, np.int32)
    sd["bn1.num_batches_tracked"] = np.array(1.5)
    sd["fuse.weights.bias"] = np.full(384, np.nan, np.float32)
    sd["fc2.weight"] = sd["fc2.weight"].astype(np.float64)
    sd["fc2.weight"][0, 0] = 1e39  # finite in float64, inf once cast to the model's float32
    sd["temporal.video.network.0.net.0.bias"] = sd["temporal.video.network.0.conv1.bias"] + 1
    with pytest.raises(StateDictError) as err:
        from_original_state_dict("can", sd)
    msg = str(err.value)
    for needle in (
        "missing keys (1): ['fc1.bias']",
        "unexpected keys (1): ['fc9.weight']",
        "bn1.running_mean: shape [5], expected [384]",
        "fc2.bias: dtype int32, expected floating point",
        "bn1.num_batches_tracked: dtype float64, expected an integer counter",
        "fuse.weights.bias: holds 384 NaN/inf values",
        "fc2.weight: holds values up to 1e+39, beyond float32's range (3.4e+38): they would become inf",
        "temporal.video.network.0.net.0.bias: differs from its duplicate temporal.video.network.0.conv1.bias",
    ):
        assert needle in msg, f"{needle!r} not in:\n{msg}"


def test_modality_mismatch_hints_at_config() -> None:
    sd = _draw("lfan", modalities=("video", "vggish"))
    with pytest.raises(StateDictError, match="pass config overrides"):
        from_original_state_dict("lfan", sd)
    model = from_original_state_dict("lfan", sd, modalities=("video", "vggish"))
    assert model.config.modalities == ("video", "vggish")


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        from_original_state_dict("vit", {})


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_file_formats_without_torch(tmp_path: Path, fmt: str) -> None:
    sd = _draw("tcn")
    path = tmp_path / f"tcn.{fmt}"
    if fmt == "npz":
        np.savez(path, **sd)
    else:
        save_file(sd, str(path))
    loaded = load_state_dict_file(path)
    assert set(loaded) == set(sd)
    model = from_original_state_dict("tcn", path)
    assert set(to_original_state_dict(model)) == set(sd)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="state dict file not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    folder = tmp_path / "model.pt"
    folder.mkdir()
    for load in (load_state_dict_file, lambda p: from_original_state_dict("tcn", p)):
        with pytest.raises(StateDictError) as err:
            load(folder)
        assert str(err.value) == (
            f"{folder} is a directory, expected a state dict file (.pt/.pth/.bin/.ckpt, .npz or .safetensors)"
        )
    with pytest.raises(StateDictError, match=rf"^{re.escape(str(tmp_path))} is a directory, expected the path of"):
        statedict.save_state_dict_npz({}, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cannot write .*x.npz: the directory .*nowhere does not exist"):
        statedict.save_state_dict_npz({}, tmp_path / "nowhere" / "x.npz")
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"x")
    with pytest.raises(StateDictError, match="unknown state dict format '.h5'"):
        load_state_dict_file(bad)
    corrupt = tmp_path / "weights.npz"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(StateDictError, match="weights.npz: not a readable .npz"):
        load_state_dict_file(corrupt)
    with pytest.raises(StateDictError, match="missing keys"):
        from_original_state_dict("tcn", {})


@pytest.mark.torch
def test_pt_files_weights_only(tmp_path: Path) -> None:
    import torch  # noqa: PLC0415 - optional heavy package; this test is marked torch

    sd = _draw("tcn")
    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    model = from_original_state_dict("tcn", path)
    out = to_original_state_dict(model)
    for k, v in sd.items():
        np.testing.assert_array_equal(out[k], v)
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}, wrapped)
    assert set(load_state_dict_file(wrapped)) == set(sd)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: needs unpickling code, refused
    with pytest.raises(StateDictError, match="not a weights-only PyTorch checkpoint"):
        load_state_dict_file(pickled)


def test_pt_without_torch_gives_clear_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch \(pip install torch==2.13.0\)"):
        load_state_dict_file(path)


def test_one_conversion_mechanism() -> None:
    """The fusion models, the BERT loader and the old import paths share one error type and one rule set."""
    assert StateDictError is statedict.StateDictError and issubclass(StateDictError, ValueError)
    assert load_state_dict_file is statedict.load_state_dict_file
    entries = _entries("tcn")
    sd = _draw("tcn")
    with pytest.raises(StateDictError, match=r"^x.npz does not match model 'tcn':\n  missing keys \(1\)"):
        statedict.check_state_dict(
            entries, {k: v for k, v in sd.items() if k != "network.0.conv1.bias"}, source="x.npz", target="model 'tcn'"
        )
