"""Checks of the PyTorch reference (``jax_cer.reference``) against the spec ``shared/spec/fusion-models.md``.

- state-dict keys, shapes and dtypes equal the original's listings ``original-state-dicts/*.tsv``, in order;
- parameter counts equal spec §2.2 / §4.4;
- forwards run in eval mode at tiny sizes and give the documented shapes and intermediates;
- the windowing of spec §1.5 and a few semantic properties (causal TCN, LFAN qkv layout, MT/JMT ``faithful``).

Run: ``python -m pytest tests/test_reference.py -q`` from the repository root.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from jax_cer.reference import (
    build_reference,
    lfan_sliding_window,
    windows,
)
from tests.conftest import IR50_PARAMS, STATE_DICT_ENTRIES, TRAINABLE, read_tsv

FUSION_MODELS = ("lfan", "can", "mt", "jmt")
INPUT_DIMS = {"video": 512, "vggish": 128, "bert": 768}


def _describe(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    """``(key, shape, dtype)`` for every state-dict entry, in the tsv's notation."""
    return [(k, str(list(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def _trainable(model: torch.nn.Module) -> int:
    """Parameters with ``requires_grad`` (``named_parameters`` counts shared tensors once)."""
    return sum(p.numel() for _, p in model.named_parameters() if p.requires_grad)


def _features(b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random feature inputs ``[B, T, C]`` for video (512), vggish (128), bert (768)."""
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, t, c, generator=g) for m, c in INPUT_DIMS.items()}


@pytest.fixture(scope="module")
def default_models() -> dict[str, torch.nn.Module]:
    """The four fusion models with default settings (K = 7), in eval mode."""
    torch.manual_seed(0)
    return {name: build_reference(name).eval() for name in FUSION_MODELS}


@pytest.fixture(scope="module")
def small_lfan() -> torch.nn.Module:
    """LFAN with ``window_length = 8`` (the only change), in eval mode."""
    torch.manual_seed(1)
    return build_reference("lfan", window_length=8).eval()


# --- structure -------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", FUSION_MODELS)
def test_state_dict_matches_original_listing(name: str, default_models: dict) -> None:
    expected = read_tsv(name)
    got = _describe(default_models[name])
    assert len(got) == STATE_DICT_ENTRIES[name] == len(expected)
    mismatches = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert not mismatches, f"{len(mismatches)} entries differ; first ones (index, got, expected): {mismatches[:5]}"


@pytest.mark.torch
@pytest.mark.parametrize("name", FUSION_MODELS)
def test_trainable_parameter_counts(name: str, default_models: dict) -> None:
    model = default_models[name]
    assert _trainable(model) == TRAINABLE[name][7]
    # The frozen part is exactly the IR-50 wrapper (backbone + unused logits head).
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith("spatial.visual.") for k in frozen)
    assert _trainable(build_reference(name, num_classes=2)) == TRAINABLE[name][2]


@pytest.mark.torch
def test_ir50_parameter_count_and_keys() -> None:
    model = build_reference("ir50")
    assert sum(p.numel() for p in model.parameters()) == IR50_PARAMS
    assert sum(p.numel() for p in model.logits.parameters()) == 4_104
    keys = list(model.state_dict())
    assert len([k for k in keys if k.startswith("backbone.")]) == 349
    assert keys[-2:] == ["logits.weight", "logits.bias"]
    # Same layout as the IR-50 inside the fusion models (spatial.visual.*).
    expected = [
        (k.removeprefix("spatial.visual."), s, d) for k, s, d in read_tsv("can") if k.startswith("spatial.visual.")
    ]
    assert _describe(model) == expected


@pytest.mark.torch
def test_weight_norm_duplicates_share_storage(default_models: dict) -> None:
    sd = default_models["can"].state_dict()
    block = "temporal.video.network.0"
    for conv, idx in (("conv1", 0), ("conv2", 4)):
        for suffix in ("bias", "weight_g", "weight_v"):
            assert sd[f"{block}.{conv}.{suffix}"].data_ptr() == sd[f"{block}.net.{idx}.{suffix}"].data_ptr()


@pytest.mark.torch
def test_backbone_mode_follows_flag() -> None:
    model = build_reference("can")
    assert model.training and not model.spatial.visual.training  # frozen from the start
    model.train()
    assert model.training and not model.spatial.visual.training
    assert not any(m.training for m in model.spatial.modules())
    assert model.temporal.video.training and model.bn1.training
    model = build_reference("can", backbone_follows_train=True).train()
    assert model.spatial.visual.training
    model.eval()
    assert not model.spatial.visual.training


# --- TCN and IR-50 ---------------------------------------------------------------------------------------


@pytest.mark.torch
def test_tcn_forward_shapes_and_causality() -> None:
    torch.manual_seed(2)
    model = build_reference("tcn", num_inputs=7, channels=[5, 5, 3], dropout=0.2).eval()
    x = torch.randn(2, 11, 7)
    y, inter = model({"x": x})
    assert y.shape == (2, 11, 3)
    assert list(inter) == ["network.0", "network.1", "network.2"]
    assert [tuple(v.shape) for v in inter.values()] == [
        (2, 11, 5),
        (2, 11, 5),
        (2, 11, 3),
    ]
    assert torch.equal(inter["network.2"], y)
    # Causal: changing frame 6 leaves frames 0..5 unchanged and changes frame 6.
    x2 = x.clone()
    x2[:, 6] += 1.0
    y2, _ = model({"x": x2})
    torch.testing.assert_close(y2[:, :6], y[:, :6], rtol=0, atol=0)
    assert not torch.allclose(y2[:, 6], y[:, 6])
    # Keys: block 0 and 2 have a downsample (7 -> 5, 5 -> 3), block 1 has none.
    keys = list(model.state_dict())
    assert "network.0.downsample.weight" in keys and "network.2.downsample.weight" in keys
    assert not any(k.startswith("network.1.downsample") for k in keys)


@pytest.mark.torch
def test_tcn_block_equals_folded_left_padded_conv() -> None:
    """Spec §3.1: conv + chomp == left-pad (k-1)d zeros + valid conv with W = g v / ||v|| over (in, k)."""
    torch.manual_seed(6)
    model = build_reference("tcn", num_inputs=6, channels=[4, 4], dropout=0.0).eval()
    x = torch.randn(2, 6, 13)  # channels first
    with torch.no_grad():
        for j, block in enumerate(model.network):
            d = 2**j
            y = block(x)
            h = x
            for conv in (block.conv1, block.conv2):
                w = conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True)
                h = torch.nn.functional.pad(h, (4 * d, 0))
                h = torch.nn.functional.conv1d(h, w, conv.bias, dilation=d)
                h = torch.nn.functional.leaky_relu(h, 0.01)
            res = x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(y, torch.nn.functional.leaky_relu(h + res, 0.01))
            x = y


@pytest.mark.torch
def test_ir50_forward_shapes() -> None:
    torch.manual_seed(3)
    model = build_reference("ir50").eval()
    frames = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        logits, inter = model({"frames": frames})
    assert logits.shape == (2, 8)
    assert inter["backbone.input_layer"].shape == (2, 40, 40, 64)
    sizes = {0: (40, 64), 3: (20, 128), 7: (10, 256), 21: (5, 512), 23: (5, 512)}
    for u, (hw, c) in sizes.items():
        assert inter[f"backbone.body.{u}"].shape == (2, hw, hw, c)
    assert len([k for k in inter if k.startswith("backbone.body.")]) == 24
    assert inter["backbone.output_layer"].shape == (2, 512)
    norms = inter["l2_norm"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2))
    pre = inter["backbone.output_layer"]
    torch.testing.assert_close(inter["l2_norm"], pre / pre.norm(dim=-1, keepdim=True))
    assert torch.equal(inter["logits"], logits)


# --- fusion forwards -------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", ("can", "mt", "jmt"))
def test_fusion_forward_shapes(name: str, default_models: dict) -> None:
    model = default_models[name]
    b, t = 2, 5
    with torch.no_grad():
        logits, inter = model(_features(b, t))
    assert logits.shape == (b, t, 7)
    assert inter["fc2"] is logits
    for m, c in (("video", 128), ("vggish", 64), ("bert", 128)):
        assert inter[f"temporal.{m}"].shape == (b, t, c)
        assert inter[f"bn.{m}"].shape == (b, t, c)
    assert all(v.dtype == torch.float32 for v in inter.values())
    if name == "can":
        for i in range(3):
            assert inter[f"fuse.attn.{i}"].shape == (b, t, 128)
        for key in ("fuse.alpha", "fuse", "fc1", "bn1"):
            assert inter[key].shape == (b, t, 384)
        torch.testing.assert_close(inter["fuse.alpha"].sum(-1), torch.ones(b, t))
    else:
        streams = ["CA_va", "CA_av"] if name == "mt" else ["CA_va", "CA_av", "CA_jrv", "CA_vjr", "CA_jra", "CA_ajr"]
        per_frame = [
            "augment_audio_feats_dim",
            "visual_encoder",
            "audio_encoder",
            *streams,
        ]
        if name == "jmt":
            per_frame += ["reduce_feats_dim", "jr_encoder"]
        else:
            assert "fuse.reduce_feats_dim" not in inter and "fuse.jr_encoder" not in inter
        for key in per_frame:
            assert inter[f"fuse.{key}"].shape == (b, t, 128)
        for key in ("fuse.final_encoder", "fuse.final_self_attention"):
            assert inter[key].shape == (b, t, len(streams), 128)
        torch.testing.assert_close(inter["fuse"], inter["fuse.final_self_attention"][:, :, -1])
        for key in ("fuse", "fc1", "bn1"):
            assert inter[key].shape == (b, t, 128)


@pytest.mark.torch
def test_lfan_forward_and_qkv_layout(small_lfan: torch.nn.Module) -> None:
    b, t = 2, 8
    with torch.no_grad():
        logits, inter = small_lfan(_features(b, t))
    assert logits.shape == (b, t, 7)
    assert torch.equal(inter["regressor"], logits)
    prefix = "fusion.layers.self_attn."
    mods = ("video", "vggish", "bert")
    for m in mods:
        assert inter[f"{prefix}qkv_proj.{m}"].shape == (b, t, 96)
    attn = inter[f"{prefix}attn_weights"]
    assert attn.shape == (b, t, 2, 3, 3)
    torch.testing.assert_close(attn.sum(-1), torch.ones(b, t, 2, 3))
    for key in ("values", "o_proj"):
        assert inter[prefix + key].shape == (b, t, 96)
    assert inter["fusion.layers.norm1"].shape == (b, t, 96)
    # Recompute A and U from the raw qkv with the spec's index rules (feature f of qkv: head f // 48,
    # role (f % 48) // 16, dim f % 16; U index h * 48 + m * 16 + d).
    qkv = torch.stack([inter[f"{prefix}qkv_proj.{m}"] for m in mods], dim=2)  # [B, T, M, 96]
    u_expected = torch.zeros(b, t, 96)
    for h in range(2):
        q, k, v = (qkv[..., h * 48 + r * 16 : h * 48 + (r + 1) * 16] for r in range(3))  # [B, T, M, 16]
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
        torch.testing.assert_close(attn[:, :, h], a)
        u = a @ v + v
        for m in range(3):
            u_expected[..., h * 48 + m * 16 : h * 48 + (m + 1) * 16] = u[:, :, m]
    torch.testing.assert_close(inter[f"{prefix}values"], u_expected)
    with pytest.raises(ValueError, match="window_length"):
        small_lfan(_features(1, 7))


@pytest.mark.torch
@pytest.mark.parametrize("name", FUSION_MODELS)
def test_forward_with_frames(name: str, default_models: dict, small_lfan: torch.nn.Module) -> None:
    model = small_lfan if name == "lfan" else default_models[name]
    b, t = (1, 8) if name == "lfan" else (1, 3)
    inputs = _features(b, t)
    inputs["video"] = torch.rand(b, t, 3, 40, 40, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        logits, inter = model(inputs)
    assert logits.shape == (b, t, 7)
    n = b * t
    assert inter["spatial.visual.backbone.input_layer"].shape == (n, 40, 40, 64)
    assert inter["spatial.visual.backbone.body.23"].shape == (n, 5, 5, 512)
    assert inter["spatial.visual.backbone.output_layer"].shape == (n, 512)
    assert inter["spatial.visual.l2_norm"].shape == (n, 512)
    assert inter["spatial.visual.logits"].shape == (n, 8)
    assert inter["spatial.visual"].shape == (b, t, 512)
    # The features path gives the same result when fed the IR-50 output.
    feats = dict(inputs, video=inter["spatial.visual"])
    with torch.no_grad():
        logits_f, _ = model(feats)
    torch.testing.assert_close(logits_f, logits)


@pytest.mark.torch
@pytest.mark.parametrize("name", ("mt", "jmt"))
def test_final_stage_faithful_vs_fixed(name: str, default_models: dict) -> None:
    """faithful=True attends over the T*B axis per stream; faithful=False across the S streams."""
    fixed = default_models[name]
    faithful = build_reference(name, faithful=True).eval()
    faithful.load_state_dict(fixed.state_dict())
    t = 4
    inputs = _features(1, t, seed=5)
    with torch.no_grad():
        out_fixed, inter_fixed = fixed(inputs)
        out_faith, inter_faith = faithful(inputs)
        # Everything before the final stage is shared.
        torch.testing.assert_close(inter_faith["fuse.audio_encoder"], inter_fixed["fuse.audio_encoder"])
        assert not torch.allclose(out_faith, out_fixed)
        # Faithful at B = 1: plain temporal self-attention within the kept stream.
        last = inter_faith["fuse.CA_av" if name == "mt" else "fuse.CA_ajr"].transpose(0, 1)  # [T, 1, E]
        z = faithful.fuse.final_encoder(last)
        z = faithful.fuse.final_self_attention(z, z, z)[0]
        torch.testing.assert_close(inter_faith["fuse"], z.transpose(0, 1))
        # Fixed: each (t, b) token attends across its S streams only.
        s_all = inter_fixed["fuse.final_encoder"][0]  # [T, S, E]
        z = fixed.fuse.final_self_attention(*(s_all.transpose(0, 1),) * 3)[0].transpose(0, 1)
        torch.testing.assert_close(inter_fixed["fuse"][0], z[:, -1])
        # A dead stream (CA_va) changes the fixed output but not the faithful one.
        for model in (fixed, faithful):
            model.fuse.CA_va.out_proj.bias.add_(1.0)
        out_fixed2, _ = fixed(inputs)
        out_faith2, _ = faithful(inputs)
        for model in (fixed, faithful):
            model.fuse.CA_va.out_proj.bias.sub_(1.0)
    torch.testing.assert_close(out_faith2, out_faith)
    assert not torch.allclose(out_fixed2, out_fixed)


# --- windowing (spec §1.5) -------------------------------------------------------------------------------


@pytest.mark.torch
def test_windows_spec_examples() -> None:
    assert windows(650, 300, 200) == [(0, 300), (200, 500), (350, 650)]
    assert windows(301, 300, 200) == [(0, 300), (1, 301)]
    assert windows(899, 300, 200) == [(0, 300), (200, 500), (400, 700), (599, 899)]
    assert windows(300, 300, 200) == [(0, 300)]
    assert windows(120, 300, 200) == [(0, 120)]
    assert windows(700, 300, 200) == [(0, 300), (200, 500), (400, 700)]
    counts = [0] * 650
    for start, end in windows(650, 300, 200):
        for i in range(start, end):
            counts[i] += 1
    expected = [1] * 200 + [2] * 100 + [1] * 50 + [2] * 150 + [1] * 150
    assert counts == expected


@pytest.mark.torch
def test_lfan_sliding_window(small_lfan: torch.nn.Module) -> None:
    w, hop = small_lfan.window_length, 5
    with torch.no_grad():
        # n > w: windows [0, 8), [5, 13), [7, 15); unweighted mean of the overlaps.
        clip = _features(1, 15, seed=6)
        out = lfan_sliding_window(small_lfan, clip, hop)
        assert out.shape == (1, 15, 7)
        acc = torch.zeros(1, 15, 7)
        cnt = torch.zeros(15)
        for start, end in [(0, 8), (5, 13), (7, 15)]:
            acc[:, start:end] += small_lfan({m: x[:, start:end] for m, x in clip.items()})[0]
            cnt[start:end] += 1
        torch.testing.assert_close(out, acc / cnt[None, :, None])
        # n == w: a single pass.
        clip = _features(1, w, seed=7)
        torch.testing.assert_close(lfan_sliding_window(small_lfan, clip, hop), small_lfan(clip)[0])
        # n < w: pad by repeating the last frame, return the padded length.
        clip = _features(1, 5, seed=8)
        out = lfan_sliding_window(small_lfan, clip, hop)
        assert out.shape == (1, w, 7)
        padded = {m: torch.cat([x, x[:, -1:].expand(1, w - 5, x.shape[-1])], dim=1) for m, x in clip.items()}
        torch.testing.assert_close(out, small_lfan(padded)[0])


@pytest.mark.torch
def test_build_reference_defaults(default_models: dict) -> None:
    with pytest.raises(ValueError, match="unknown reference model"):
        build_reference("lstm")
    # TCN dropout: 0.1 in LFAN, 0.2 in CAN / MT / JMT (quirk 16).
    for name, rate in (("lfan", 0.1), ("can", 0.2), ("mt", 0.2), ("jmt", 0.2)):
        block = default_models[name].temporal.video.network[0]
        assert math.isclose(block.dropout1.p, rate) and math.isclose(block.dropout2.p, rate)
    lfan = default_models["lfan"]
    assert lfan.window_length == 300 and lfan.leader == "video"
    assert math.isclose(lfan.fusion.layers.dropout.p, 0.1)
    assert default_models["jmt"].fuse.faithful is False
