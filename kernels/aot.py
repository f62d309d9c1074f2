"""Ahead-of-time compilation of every shipped kernel configuration for GPU targets, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` produces the PTX and cubin;
the register count and spills come from running Triton's own ptxas with ``-v`` on that PTX (the
driver that normally reports them needs a GPU), the shared memory from Triton's metadata.
Each configuration is compiled with causal masking and per-example lengths enabled, in its variant
(:mod:`jax_cer.kernels.configs`): ``aligned`` (D == BLOCK_D and strides divisible by 16 elements: D
32, 64, 128, 256 in contiguous arrays, where loads vectorize and pipeline, which costs shared
memory) and ``unaligned`` (an odd D: element-wise loads, which cost registers). The signature
mirrors what jax-triton compiles: array pointers 16-byte aligned, and scalar arguments equal to 1
(the head dim's stride of contiguous arrays) specialized as constants. The PTX is searched for the
tensor-core instructions (``wgmma.mma_async`` on Hopper, ``mma.sync`` on Ampere) and ``cp.async``:
the 16-bit aligned forward, dK/dV and dQ kernels must use wgmma on sm_90 and mma.sync on sm_80,
each with pipelined asynchronous copies (:func:`problems`).

Run ``python -m jax_cer.kernels.aot --json PATH [--ptx-dir DIR]`` to write the table (``jax-cer bench`` reports it in
BENCHMARKS.md); ``tests/test_kernels_aot.py`` asserts that everything compiles, nothing spills
and the shared memory fits the chip.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jax_cer.kernels.configs import DTYPES, KernelConfig, shipped
from jax_cer.kernels.loader import require_mode

TARGETS = {80: "sm_80 (A100)", 90: "sm_90 (H100/H200)"}
SHARED_LIMIT = {80: 166912, 90: 232448}
"""Largest dynamic shared memory one block may use (bytes): A100 163 KiB, H100 227 KiB."""

_TRITON_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_STRIDES = [f"stride_{t}{a}" for t in "qkv" for a in "bshd"]
_FLAGS = ("IS_CAUSAL", "HAS_LENS", "BLOCK_M", "BLOCK_N", "BLOCK_D", "IEEE", "UPCAST")


VARIANT_HINTS = {"aligned": {"EVEN_D": True, "ALIGN": 16}, "unaligned": {"EVEN_D": False, "ALIGN": 1}}
"""The layout hints each variant (:data:`jax_cer.kernels.configs.VARIANTS`) is compiled with."""


@dataclasses.dataclass
class CompileResult:
    kernel: str
    dtype: str
    block_d: int
    cc: int
    config: dict
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    seconds: float
    variant: str = "unaligned"
    wgmma: int = 0
    """``wgmma.mma_async`` instructions in the PTX (Hopper's warpgroup tensor-core MMA)."""
    mma_sync: int = 0
    """``mma.sync`` instructions in the PTX (Ampere's warp-level tensor-core MMA)."""
    cp_async: int = 0
    """``cp.async`` copies in the PTX (asynchronous global-to-shared loads, software-pipelined)."""

    @property
    def ok(self) -> bool:
        return self.spill_stores == 0 and self.spill_loads == 0 and self.shared_bytes <= SHARED_LIMIT[self.cc]


def signature(
    kernel: str, dtype: str, bd: int, cfg: KernelConfig, variant: str = "unaligned"
) -> tuple[str, dict, dict]:
    """(kernel function name, Triton signature, constexprs) of one configuration. The head dim's
    strides are the constant 1, as jax-triton specializes them for contiguous arrays."""
    t = "*" + _TRITON_DTYPE[dtype]
    hints = VARIANT_HINTS[variant]
    flags = {
        "IS_CAUSAL": True,
        "HAS_LENS": True,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_D": bd,
        "IEEE": dtype == "float32",
        "UPCAST": False,
        **hints,
    }
    if kernel == "bwd_preprocess":
        sig = {"O": t, "DO": t, **{f"stride_o{a}": "i32" for a in "bsh"}, "stride_od": "constexpr"}
        sig.update({"H": "i32", "SQ": "i32", "D": "i32", "DELTA": "*fp32"})
        consts = {"stride_od": 1, "BLOCK_M": cfg.block_m, "BLOCK_D": bd, **hints}
        return "_attn_bwd_preprocess_kernel", {**sig, **dict.fromkeys(consts, "constexpr")}, consts
    sizes = {"H": "i32", "SQ": "i32", "SK": "i32", "D": "i32", "scale_log2": "fp32"}
    if kernel == "fwd":
        sig = {"Q": t, "K": t, "V": t, "LENS": "*i32", **dict.fromkeys(_STRIDES, "i32"), **sizes}
        sig.update(O=t, LSE="*fp32")
        name = "_attn_fwd_kernel"
    else:
        sig = {"Q": t, "K": t, "V": t, "DO": t, "LSE": "*fp32", "DELTA": "*fp32", "LENS": "*i32"}
        sig.update({**dict.fromkeys(_STRIDES, "i32"), **sizes, "scale": "fp32"})
        if kernel == "bwd_dkdv":
            sig.update(DK=t, DV=t)
            name = "_attn_bwd_dkdv_kernel"
        else:
            sig.update(DQ=t)
            name = "_attn_bwd_dq_kernel"
    unit = {f"stride_{t}d": 1 for t in "qkv"}
    sig.update(dict.fromkeys(unit, "constexpr"))
    return name, {**sig, **dict.fromkeys(flags, "constexpr")}, {**unit, **flags}


def pointer_attrs(sig: dict) -> dict:
    """jax-triton's assumption about array arguments: 16-byte aligned."""
    return {(i,): [["tt.divisibility", 16]] for i, v in enumerate(sig.values()) if v.startswith("*")}


def _ptxas_report(ptx: str, cc: int) -> tuple[int, int, int]:
    from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415 - optional heavy package

    arch = "sm_90a" if cc == 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run(
            [get_ptxas(cc).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", str(src), "-o", str(src) + ".o"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return regs, int(spills.group(1)), int(spills.group(2))


def _compile(kernel: str, dtype: str, bd: int, cfg: KernelConfig, cc: int, variant: str):
    """Triton's compiled kernel of one configuration for compute capability ``cc``, as jax-triton builds it."""
    import triton  # noqa: PLC0415 - optional heavy package, imported after the kernels' mode is set
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415 - as above
    from triton.compiler import ASTSource  # noqa: PLC0415 - as above

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    name, sig, consts = signature(kernel, dtype, bd, cfg, variant)
    fn = getattr(require_mode(interpret=False), name)
    return triton.compile(
        ASTSource(fn, sig, consts, attrs=pointer_attrs(sig)),
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )


def ptx_name(kernel: str, dtype: str, bd: int, cc: int, variant: str) -> str:
    """``<kernel>-<dtype>-d<BLOCK_D>-sm<cc>-<variant>.ptx``, kernel without its ``bwd_`` prefix
    (``fwd``, ``bwd_preprocess``, ``dkdv``, ``dq``)."""
    short = {"bwd_dkdv": "dkdv", "bwd_dq": "dq"}.get(kernel, kernel)
    return f"{short}-{dtype}-d{bd}-sm{cc}-{variant}.ptx"


def instruction_counts(ptx: str) -> dict[str, int]:
    """Tensor-core and asynchronous-copy instructions in a kernel's PTX."""
    return {
        "wgmma": len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
        "mma_sync": len(re.findall(r"\bmma\.sync\b", ptx)),
        "cp_async": len(re.findall(r"\bcp\.async\.c[ag]\b", ptx)),
    }


def compile_one(
    kernel: str,
    dtype: str,
    bd: int,
    cfg: KernelConfig,
    cc: int,
    variant: str = "unaligned",
    ptx_dir: str | None = None,
) -> CompileResult:
    """Compiles one configuration for compute capability ``cc``; raises if Triton or ptxas fails.
    With ``ptx_dir``, the PTX is written there as :func:`ptx_name`."""
    t0 = time.perf_counter()
    compiled = _compile(kernel, dtype, bd, cfg, cc, variant)
    ptx = compiled.asm["ptx"]
    if ptx_dir is not None:
        Path(ptx_dir).mkdir(parents=True, exist_ok=True)
        (Path(ptx_dir) / ptx_name(kernel, dtype, bd, cc, variant)).write_text(ptx)
    regs, stores, loads = _ptxas_report(ptx, cc)
    return CompileResult(
        kernel,
        dtype,
        bd,
        cc,
        dataclasses.asdict(cfg),
        regs,
        stores,
        loads,
        int(compiled.metadata.shared),
        time.perf_counter() - t0,
        variant,
        **instruction_counts(ptx),
    )


MEMORY_OPS = ("ld.global.v4", "ld.global.v2", "ld.global.b16", "ld.global.b32", "cp.async", "st.global.v4")


def memory_ops(kernel: str, dtype: str, bd: int, cfg: KernelConfig, cc: int, variant: str) -> dict[str, int]:
    """How the compiled kernel moves data: counts of global load / store and async-copy instructions
    in its PTX (16-byte ``v4`` accesses and ``cp.async`` pipelining, or one element at a time)."""
    ptx = _compile(kernel, dtype, bd, cfg, cc, variant).asm["ptx"]
    return {op: len(re.findall(re.escape(op) + r"\b", ptx)) for op in MEMORY_OPS}


TENSOR_CORE_KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
TENSOR_CORE_HEAD_DIMS = (64, 128)
"""The head dims whose 16-bit aligned tiles are sized for tensor cores (every model's D)."""


def problems(r: CompileResult) -> list[str]:
    """What is wrong with one compilation: spills, too much shared memory, and for a 16-bit aligned
    forward, dK/dV or dQ kernel, missing tensor-core instructions (sm_90: wgmma and no mma.sync;
    sm_80: mma.sync) or missing cp.async pipelining (at least 2 stages), at D 64 and 128."""
    name = f"{r.kernel} {r.dtype} D{r.block_d} sm_{r.cc} {r.variant}"
    out = []
    if r.spill_stores or r.spill_loads:
        out.append(f"{name}: {r.spill_stores + r.spill_loads} B of register spills")
    if r.shared_bytes > SHARED_LIMIT[r.cc]:
        out.append(f"{name}: {r.shared_bytes} B of shared memory, over the chip's {SHARED_LIMIT[r.cc]}")
    tensor = r.kernel in TENSOR_CORE_KERNELS and r.block_d in TENSOR_CORE_HEAD_DIMS
    if tensor and r.variant == "aligned" and r.dtype != "float32":
        if r.cc >= 90 and (r.wgmma == 0 or r.mma_sync > 0):
            out.append(f"{name}: {r.wgmma} wgmma and {r.mma_sync} mma.sync (wgmma only expected)")
        if r.cc < 90 and r.mma_sync == 0:
            out.append(f"{name}: no mma.sync")
        if r.cp_async == 0 or r.config["num_stages"] < 2:
            out.append(f"{name}: loads not pipelined ({r.cp_async} cp.async, {r.config['num_stages']} stage(s))")
    return out


def _job(args):
    return compile_one(*args)


def compile_all(
    targets=(80, 90), workers: int | None = None, ptx_dir: str | None = None, dtypes=DTYPES
) -> list[CompileResult]:
    """Compiles every shipped configuration of ``dtypes``, each in its variant and for its target
    (sm_80 or sm_90), in parallel processes."""
    jobs = [(k, dt, bd, cfg, t, v, ptx_dir) for k, dt, bd, v, t, cfg in shipped() if t in targets and dt in dtypes]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_job, jobs))


def table(results: list[CompileResult]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| kernel | dtype | BLOCK_D | target | variant | BLOCK_M x BLOCK_N | warps | stages | registers | spills "
        "| shared KiB | wgmma | mma.sync | cp.async |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.config
        blocks = f"{c['block_m']} x {c['block_n']}" if c["block_n"] else f"{c['block_m']}"
        lines.append(
            f"| {r.kernel} | {r.dtype} | {r.block_d} | sm_{r.cc} | {r.variant} | {blocks} | {c['num_warps']} | "
            f"{c['num_stages']} | "
            f"{r.registers} | {r.spill_stores + r.spill_loads} | {r.shared_bytes / 1024:.1f} | {r.wgmma} | "
            f"{r.mma_sync} | {r.cp_async} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("jax_cer.kernels.aot compiles for GPU targets: run it with TRITON_INTERPRET=0", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m jax_cer.kernels.aot",
        description="Compile every shipped attention kernel for sm_80 and sm_90 (no GPU needed).",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--ptx-dir",
        metavar="DIR",
        help="write each compilation's PTX as DIR/<kernel>-<dtype>-d<BLOCK_D>-sm<cc>-<variant>.ptx "
        "(kernel: fwd, bwd_preprocess, dkdv, dq)",
    )
    parser.add_argument(
        "--dtypes",
        default=",".join(DTYPES),
        help=f"comma-separated subset of {','.join(DTYPES)} (default: all; float16 shares bfloat16's tiles)",
    )
    args = parser.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    if unknown := sorted(set(dtypes) - set(DTYPES)):
        parser.error(f"unknown dtype(s) {', '.join(unknown)}: choose from {', '.join(DTYPES)}")
    results = compile_all(ptx_dir=args.ptx_dir, dtypes=dtypes)
    print(table(results))
    bad = [msg for r in results for msg in problems(r)]
    if args.json:
        from triton import __version__ as triton_version  # noqa: PLC0415 - optional heavy package

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "triton": triton_version,
                    "shared_limit": SHARED_LIMIT,
                    "results": [dataclasses.asdict(r) for r in results],
                },
                indent=1,
            )
        )
    if bad:
        print("\n".join(bad), file=sys.stderr)
        print(f"{len(bad)} problem(s) in the shipped configurations", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
