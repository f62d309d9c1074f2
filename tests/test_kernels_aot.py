"""Ahead-of-time compile check of every shipped kernel configuration, for sm_80 and sm_90, on a
machine without a GPU: it compiles, does not spill registers and fits the chip's shared memory.
The registers and shared memory of each configuration are printed (and recorded in
BENCHMARKS.md from ``repro/results/aot/``, written by ``python -m jax_cer.kernels.aot --json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jax_cer.kernels.configs import shipped
from tests.conftest import REPO

pytest.importorskip("triton")


@pytest.mark.parametrize(
    "dtypes",
    [
        pytest.param(("bfloat16", "float32"), id="bf16-fp32"),
        pytest.param(("float16",), id="fp16", marks=pytest.mark.slow),  # bfloat16's tiles, other instructions
    ],
)
def test_every_shipped_configuration_compiles_without_spills(tmp_path, capsys, dtypes) -> None:
    out = tmp_path / "aot.json"
    ptx_dir = tmp_path / "ptx"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    command = ["-m", "jax_cer.kernels.aot", "--json", str(out), "--ptx-dir", str(ptx_dir), "--dtypes", ",".join(dtypes)]
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    with capsys.disabled():
        print("\n" + proc.stdout)
    assert out.is_file(), f"jax_cer.kernels.aot failed:\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    results = data["results"]
    assert len(results) == len([c for c in shipped() if c[1] in dtypes])  # each for its variant and target
    assert {r["cc"] for r in results} == {80, 90}
    assert {r["variant"] for r in results} == {"aligned", "unaligned"}
    bad = [
        f"{r['kernel']} {r['dtype']} D{r['block_d']} sm_{r['cc']} {r['variant']}: "
        f"{r['spill_stores'] + r['spill_loads']} B spilled, "
        f"{r['shared_bytes']} B shared (limit {data['shared_limit'][str(r['cc'])]})"
        for r in results
        if r["spill_stores"] or r["spill_loads"] or r["shared_bytes"] > data["shared_limit"][str(r["cc"])]
    ]
    assert not bad, "\n".join(bad)
    assert all(0 < r["registers"] <= 255 for r in results)
    # the sm_80 table also serves Ada and consumer Blackwell, whose blocks get 99 KiB
    assert max(r["shared_bytes"] for r in results if r["cc"] == 80) <= 99 * 1024

    # Tensor cores: every 16-bit aligned forward, dK/dV and dQ kernel at D 64 and 128 is wgmma only on
    # sm_90 and mma.sync on sm_80, with its loads pipelined by cp.async over >= 2 stages.
    tensor = [
        r
        for r in results
        if r["variant"] == "aligned"
        and r["dtype"] in ("float16", "bfloat16")
        and r["block_d"] in (64, 128)
        and r["kernel"] in ("fwd", "bwd_dkdv", "bwd_dq")
    ]
    assert len(tensor) == len([d for d in dtypes if d != "float32"]) * 2 * 3 * 2
    for r in tensor:
        name = f"{r['kernel']} {r['dtype']} D{r['block_d']} sm_{r['cc']}"
        if r["cc"] == 90:
            assert r["wgmma"] > 0 and r["mma_sync"] == 0, f"{name}: {r['wgmma']} wgmma, {r['mma_sync']} mma.sync"
        else:
            assert r["mma_sync"] > 0 and r["wgmma"] == 0, f"{name}: {r['mma_sync']} mma.sync"
        assert r["cp_async"] > 0 and r["config"]["num_stages"] >= 2, f"{name}: loads not pipelined"
    assert proc.returncode == 0, proc.stderr[-2000:]

    # --ptx-dir: one file per compilation, named <kernel>-<dtype>-d<BLOCK_D>-sm<cc>-<variant>.ptx
    names = {p.name for p in ptx_dir.glob("*.ptx")}
    assert len(names) == len(results)
    assert {n.split("-")[0] for n in names} == {"fwd", "bwd_preprocess", "dkdv", "dq"}
    half = "float16" if "float16" in dtypes else "bfloat16"
    dkdv = (ptx_dir / f"dkdv-{half}-d128-sm90-aligned.ptx").read_text()
    assert "wgmma.mma_async" in dkdv and "cp.async" in dkdv and "mma.sync" not in dkdv
    assert "mma.sync" in (ptx_dir / f"dq-{half}-d64-sm80-aligned.ptx").read_text()


def test_aligned_head_dims_vectorize_and_pipeline() -> None:
    """D == BLOCK_D with 16-aligned strides (every model's case): 16-byte loads and stores and
    asynchronous copies, never one bf16 element at a time; an odd D falls back to element loads."""
    code = (
        "from jax_cer.kernels.aot import memory_ops\n"
        "from jax_cer.kernels.configs import gpu_config\n"
        "import json\n"
        "cfg = gpu_config('fwd', 'bfloat16', 128, 'aligned', 90)\n"
        "print(json.dumps({v: memory_ops('fwd', 'bfloat16', 128, cfg, 90, v) for v in ('aligned', 'unaligned')}))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    aligned, unaligned = ops["aligned"], ops["unaligned"]
    assert aligned["ld.global.b16"] == 0 and aligned["ld.global.v4"] > 0 and aligned["st.global.v4"] > 0
    assert aligned["cp.async"] > 0  # num_stages 2: the key / value loads are pipelined
    assert unaligned["ld.global.b16"] > 0 and unaligned["cp.async"] == 0
