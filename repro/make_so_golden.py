"""Writes the SO golden trajectory from the PyTorch reference (``repro/reference/so.py``).

Run from the repository root (needs torch): ``python repro/make_so_golden.py``. Inputs (initial
parameters, per-step gradients, injected masks) come from ``jax_cer/parity/so_trajectory.py`` with
the recorded seed and are not stored. For every step the file ``jax_cer/parity/golden/so/trajectory.npz``
holds each parameter after the step (``W<i>`` as ``[steps, *shape]``), and for sparse leaves the
support (sorted flat indices) and the first and second moments on it (``support<i>``, ``m<i>``,
``v<i>`` as ``[steps, k]``), for the dense leaf its moments. ``manifest.json`` beside it records
the command, versions, configuration and a sha256 per array. Never edit these files by hand.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jax_cer.parity import so_trajectory as traj  # noqa: E402
from jax_cer.parity.weights import sha256  # noqa: E402
from jax_cer.reference.so import SO  # noqa: E402

OUT = ROOT / "jax_cer" / "parity" / "golden" / "so"


def run(cfg=traj.CONFIG) -> dict[str, np.ndarray]:
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in traj.initial_params(cfg)]
    dense = [p.ndim < 2 for p in params]
    groups = [
        {"params": [p for p, d in zip(params, dense, strict=True) if not d], "dense": False},
        {"params": [p for p, d in zip(params, dense, strict=True) if d], "dense": True},
    ]
    opt = SO(
        groups,
        lr=cfg["lr"],
        betas=(cfg["b1"], cfg["b2"]),
        eps=cfg["eps"],
        weight_decay=cfg["weight_decay"],
        density_ratio=cfg["density"],
        T=cfg["refresh_every"],
        mask_fn=lambda leaf, j, n, k: torch.from_numpy(traj.mask(leaf, j, n, k, cfg)),
    )
    rec: dict[str, list] = {}
    for step in range(1, cfg["steps"] + 1):
        for p, g in zip(params, traj.gradient(step, cfg), strict=True):
            p.grad = torch.from_numpy(g)
        opt.step()
        for i, p in enumerate(params):
            rec.setdefault(f"W{i}", []).append(p.detach().numpy().copy())
            st = opt.state[p]
            names = ("m", "v") if dense[i] else ("support", "m", "v")
            for name in names:
                rec.setdefault(f"{name}{i}", []).append(st[name].numpy().copy())
    return {k: np.stack(v) for k, v in rec.items()}


def main() -> int:
    torch.use_deterministic_algorithms(True)
    arrays = run()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "trajectory.npz", **arrays)
    manifest = {
        "command": "python repro/make_so_golden.py",
        "created": datetime.date.today().isoformat(),
        "producer": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "config": {**traj.CONFIG, "shapes": [list(s) for s in traj.CONFIG["shapes"]]},
        "inputs": "jax_cer/parity/so_trajectory.py: initial_params, gradient(step), mask(leaf, refresh, n, k)",
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256(v)} for k, v in arrays.items()},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = (OUT / "trajectory.npz").stat().st_size
    print(f"wrote {OUT / 'trajectory.npz'} ({size / 1e6:.2f} MB, {len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
