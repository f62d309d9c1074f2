"""Writes the golden reference files of the fusion models from the PyTorch reference.

Run from the repository root (needs torch==2.13.0, installed by ``pip install -e ".[test]"``)::

    python repro/make_golden.py                 # every case -> jax_cer/parity/golden/
    python repro/make_golden.py --only can,jmt  # some cases (the manifest keeps the others)

For each case it builds the reference model (``repro/reference``) with the case's config,
loads synthetic weights drawn by :mod:`jax_cer.parity.weights` from the case's seed (weights
are not stored, only their sha256), draws the inputs from the input seed, runs the forward
pass in fp32 (eval mode, or train mode with dropout 0 for ``*_train`` cases), then forward and
backward of the mean per-frame cross-entropy on a float64 copy (gradients of these piecewise
linear models are only comparable away from rounding at the activation kinks), and stores in
``<case>.npz``:

* ``input/<name>`` (port layout: ``[B, T, C]``, frames NHWC), ``labels``;
* ``output`` (logits), ``loss``, ``inter/<name>`` (named intermediates, port layout);
* ``grad_input/<name>``; ``grad_param/<key>`` per trainable original key: the whole gradient
  when it has at most 4096 entries, otherwise the 2048 entries at
  ``weights.sample_indices(seed_weights, key, size, 2048)``;
* ``state_after/<key>`` (train cases): BatchNorm statistics after the forward pass.

``manifest.json`` records the command, versions, seeds, config, shapes, dtypes and the sha256
of every stored array and every synthetic weight. Never edit golden files by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from jax_cer.parity.weights import sha256
from jax_cer.reference.golden_cases import CASES, make_case

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "jax_cer" / "parity" / "golden"


def _dedupe(name: str, meta: dict, arrays: dict, written: dict[str, dict]) -> dict:
    """Drops what a case shares with its base (inputs; equal intermediates)."""
    spec = CASES[name]
    if "base" not in spec:
        return arrays
    base = written[spec["base"]]
    meta["base"] = spec["base"]
    meta["inherit_intermediates"] = bool(spec.get("inherit_intermediates"))
    out = {}
    for k, v in arrays.items():
        if k.startswith("input/"):
            if not np.array_equal(base[k], v):
                raise RuntimeError(f"{name}: input {k} differs from its base {spec['base']}")
            continue
        if k.startswith("inter/") and k in base and np.array_equal(base[k], v):
            continue
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated case names (default: all): " + ",".join(CASES))
    parser.add_argument("--out-dir", default=str(GOLDEN_DIR), help="output folder (default: jax_cer/parity/golden)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases are {list(CASES)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.setdefault("cases", {})
    manifest.setdefault("weights_sha256", {})
    # bases first, so that derived cases can drop what they share
    names = sorted(set(names) | {CASES[n]["base"] for n in names if "base" in CASES[n]}, key=list(CASES).index)
    written: dict[str, dict] = {}
    for name in names:
        print(f"{name} ...", flush=True)
        meta, arrays, weight_shas = make_case(name)
        written[name] = arrays
        arrays = _dedupe(name, meta, arrays, written)
        meta["arrays"] = {
            n: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256(v)} for n, v in arrays.items()
        }
        meta["file"] = f"{name}.npz"
        np.savez_compressed(out_dir / meta["file"], **arrays)
        manifest["cases"][name] = meta
        manifest["weights_sha256"][meta["weights"]] = weight_shas
    manifest["cases"] = {n: manifest["cases"][n] for n in CASES if n in manifest["cases"]}
    used = {c["weights"] for c in manifest["cases"].values()}
    manifest["weights_sha256"] = {k: v for k, v in sorted(manifest["weights_sha256"].items()) if k in used}
    manifest.update(
        command="python repro/make_golden.py" + (f" --only {args.only}" if args.only else ""),
        created=datetime.date.today().isoformat(),
        producer={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        weights=(
            "not stored: tensor `key` = jax_cer.parity.weights.draw_tensor(seed_weights, key, shape, dtype), drawn "
            "from np.random.default_rng([seed_weights, crc32(key), 0]); sha256 per key in "
            "weights_sha256['<model>@<seed_weights>']"
        ),
        layouts="port layout: [B, T, C] features, NHWC frames and IR-50 maps; MT/JMT streams [B, T, S, E]",
    )
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    total = sum(p.stat().st_size for p in out_dir.glob("*.npz"))
    print(f"wrote {len(names)} case(s) to {out_dir} ({total / 1e6:.1f} MB of .npz in the folder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
