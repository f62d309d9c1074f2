"""The golden cases of the fusion models, built from the PyTorch reference.

:func:`make_case` builds one case in memory: the reference model with the case's config and
synthetic weights drawn by :mod:`jax_cer.parity.weights` from the case's seed, inputs drawn from
the input seed, the fp32 forward (eval mode, or train mode with dropout 0 for ``*_train``
cases), and forward and backward of the mean per-frame cross-entropy on a float64 copy.
``repro/make_golden.py`` writes these cases to the golden folder; the live tests build them
with fresh seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jax_cer.parity.weights import draw_state_dict, sample_indices, sha256
from jax_cer.reference import build_reference

FULL_GRAD_MAX = 4096
GRAD_SAMPLES = 1024
STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")
FEATURES = {"video": 512, "vggish": 128, "bert": 768}
IR50_KEEP = ("backbone.body.3", "backbone.body.7", "backbone.body.21", "backbone.body.23")

# Cases. ``seeds``: (weights, inputs). A case with ``base`` shares the base's seeds, weights
# and inputs; its file stores no inputs (they are read from the base) and, with
# ``inherit_intermediates``, only the intermediates that differ from the base's (MT/JMT fixed vs
# faithful differ from the final encoder on). Training-mode cases store no intermediates.
CASES: dict[str, dict[str, Any]] = {
    "tcn": dict(model="tcn", config={}, batch=2, frames=64, seeds=(1000, 2000)),
    "ir50": dict(model="ir50", config={}, batch=2, frames=None, seeds=(1001, 2001)),
    "lfan": dict(model="lfan", config={"window_length": 64}, batch=2, frames=64, seeds=(1002, 2002)),
    "lfan_frames": dict(
        model="lfan", config={"window_length": 4}, batch=2, frames=4, video="frames", seeds=(1002, 2003)
    ),
    "can": dict(model="can", config={}, batch=2, frames=64, seeds=(1004, 2004)),
    "mt_faithful": dict(model="mt", config={"faithful": True}, batch=2, frames=64, seeds=(1005, 2005)),
    "mt": dict(
        model="mt", config={"faithful": False}, batch=2, frames=64, base="mt_faithful", inherit_intermediates=True
    ),
    "jmt_faithful": dict(model="jmt", config={"faithful": True}, batch=2, frames=64, seeds=(1007, 2007)),
    "jmt": dict(
        model="jmt", config={"faithful": False}, batch=2, frames=64, base="jmt_faithful", inherit_intermediates=True
    ),
    "lfan_train": dict(
        model="lfan",
        config={"window_length": 64, "dropout": 0.0, "attn_dropout": 0.0},
        batch=2,
        frames=64,
        mode="train",
        base="lfan",
    ),
    "can_train": dict(model="can", config={"dropout": 0.0}, batch=2, frames=64, mode="train", base="can"),
    # fixed JMT: the faithful one's final attention over all T*B tokens makes fc1's outputs nearly
    # constant over (B, T), and a training-mode bn1 then amplifies fp32 rounding ~100x
    "jmt_train": dict(
        model="jmt", config={"faithful": False, "dropout": 0.0}, batch=2, frames=64, mode="train", base="jmt_faithful"
    ),
}
LOSS_KEYS = {"tcn": "network.4", "ir50": "logits", "lfan": "regressor", "can": "fc2", "mt": "fc2", "jmt": "fc2"}


def case_seeds(name: str) -> tuple[int, int]:
    spec = CASES[name]
    return tuple(CASES[spec["base"]]["seeds"]) if "base" in spec else tuple(spec["seeds"])


def _inputs(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, t = spec["batch"], spec["frames"]
    if spec["model"] == "tcn":
        return {"x": rng.normal(size=(b, t, 512)).astype(np.float32)}
    if spec["model"] == "ir50":
        return {"frames": rng.uniform(-1, 1, size=(b, 40, 40, 3)).astype(np.float32)}
    out = {}
    for m, dim in FEATURES.items():
        if m == "video" and spec.get("video") == "frames":
            out[m] = rng.uniform(-1, 1, size=(b, t, 40, 40, 3)).astype(np.float32)
        else:
            x = rng.normal(size=(b, t, dim))
            if m == "video":  # IR-50 features are L2-normalised
                x /= np.linalg.norm(x, axis=-1, keepdims=True)
            out[m] = x.astype(np.float32)
    return out


def _to_reference(name: str, x: np.ndarray, requires_grad: bool) -> torch.Tensor:
    """Port layout -> the reference's input layout (frames NHWC -> NCHW)."""
    t = torch.from_numpy(x.copy())
    if x.ndim >= 4 and x.shape[-1] == 3:
        t = t.movedim(-1, -3).contiguous()
    return t.requires_grad_(requires_grad)


def _grad_to_port(g: torch.Tensor) -> np.ndarray:
    g = g.detach()
    if g.ndim >= 4 and g.shape[-3] == 3:
        g = g.movedim(-3, -1)
    return g.contiguous().numpy().astype(np.float32)


def _keep_intermediate(model: str, key: str, video: str | None) -> bool:
    if model == "tcn":
        return True
    if model == "ir50":
        return key in IR50_KEEP or key in ("backbone.output_layer", "l2_norm", "logits")
    if key.startswith("spatial.visual"):
        return key in ("spatial.visual", "spatial.visual.backbone.output_layer")
    return True


def make_case(
    name: str, seed_weights: int | None = None, seed_inputs: int | None = None, **overrides
) -> tuple[dict, dict]:
    """Builds one golden case in memory: ``(manifest entry, arrays)``.

    ``overrides`` replace fields of the case spec (``batch``, ``frames``, ``config``, ...); live
    tests use them with fresh seeds.
    """
    spec = {**CASES[name], **overrides}
    sw, si = case_seeds(name)
    sw = sw if seed_weights is None else seed_weights
    si = si if seed_inputs is None else seed_inputs
    mode = spec.get("mode", "eval")
    torch.manual_seed(0)
    model = build_reference(spec["model"], **spec["config"])
    sd = model.state_dict()
    rows = [(k, tuple(v.shape), "int64" if v.dtype == torch.int64 else "float32") for k, v in sd.items()]
    weights = draw_state_dict(rows, sw)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    # gradients: a float64 twin with the same weights (weight_norm modules cannot be deep-copied)
    torch.manual_seed(0)
    model64 = build_reference(spec["model"], **spec["config"])
    model64.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    model64.double()
    model.train(mode == "train")
    model64.train(mode == "train")

    rng = np.random.default_rng(si)
    inputs = _inputs(spec, rng)
    with torch.no_grad():
        logits, inter = model({k: _to_reference(k, v, False) for k, v in inputs.items()})
    k = logits.shape[-1]
    labels = rng.integers(0, k, size=logits.shape[:-1]).astype(np.int64)
    target = torch.from_numpy(labels).reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, k), target)

    arrays: dict[str, np.ndarray] = {f"input/{n}": v for n, v in inputs.items()}
    arrays["labels"] = labels.astype(np.int32)
    arrays["output"] = logits.numpy()
    arrays["loss"] = np.asarray(loss.item(), np.float32)
    if mode == "eval":  # training-mode cases check outputs, statistics and gradients only
        for key, v in inter.items():
            if _keep_intermediate(spec["model"], key, spec.get("video")):
                arrays[f"inter/{key}"] = v.contiguous().numpy()
    else:
        for key, v in model.state_dict().items():
            if key.startswith(("bn.", "bn1.")) and key.rsplit(".", 1)[-1] in STAT_NAMES:
                arrays[f"state_after/{key}"] = v.numpy().copy()

    # Gradients in float64: the models are piecewise linear (LeakyReLU, PReLU, ReLU), so an fp32
    # gradient jumps wherever two correct implementations round a pre-activation to opposite
    # sides of zero; in float64 that needs |x| < 1e-14 and the comparison tests the backward math.
    t_inputs = {n: _to_reference(n, v.astype(np.float64), True) for n, v in inputs.items()}
    logits64, _ = model64(t_inputs)
    torch.nn.functional.cross_entropy(logits64.reshape(-1, k), target).backward()
    grad_none_inputs = []
    for n, t in t_inputs.items():
        if t.grad is None:
            grad_none_inputs.append(n)
        else:
            arrays[f"grad_input/{n}"] = _grad_to_port(t.grad)
    grad_none, sampled = [], {}
    for key, p in model64.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            grad_none.append(key)
            continue
        g = p.grad.detach().numpy().astype(np.float32)
        if g.size > FULL_GRAD_MAX:
            sampled[key] = GRAD_SAMPLES
            g = g.reshape(-1)[sample_indices(sw, key, g.size, GRAD_SAMPLES)]
        arrays[f"grad_param/{key}"] = np.ascontiguousarray(g)

    meta = {
        "model": spec["model"],
        "config": spec["config"],
        "jax_config": {"compute_unused_modalities": True} if spec["model"] in ("mt", "jmt") else {},
        "mode": mode,
        "batch": spec["batch"],
        "frames": spec["frames"],
        "video_input": spec.get("video", "features"),
        "seed_weights": sw,
        "seed_inputs": si,
        "loss_key": LOSS_KEYS[spec["model"]],
        "loss": "mean cross-entropy over every frame (labels drawn from the input seed after the inputs)",
        "gradients": "float64 forward and backward on both sides, stored as float32",
        "grad_sampled": sampled,
        "grad_none": grad_none,
        "grad_none_inputs": grad_none_inputs,
        "weights": f"{spec['model']}@{sw}",
    }
    return meta, arrays, {key: sha256(v) for key, v in weights.items()}
