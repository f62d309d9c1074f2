"""``jax-cer repro`` rows of the text encoder and the LoRA classifier (golden files of
``repro/make_text_golden.py`` in ``jax_cer/parity/golden/text``).

- ``text_encoder``: token ids (exact), every hidden state over real tokens (``layers``, <= 1e-5)
  and the sentence embeddings (``end_to_end``, <= 1e-5) of :class:`jax_cer.text.SentenceEncoder`
  on the all-MiniLM-L6-v2 checkpoint against transformers / sentence-transformers.
- ``text_lora``: the same encoder with the reference's LoRA factors (q, v; r 8, rsLoRA) and head:
  logits (<= 1e-5), loss, and the parameter change of one clip(0.3) + SGD(weight decay 0.01) step
  on the LoRA factors and the head (<= 1e-4 relative to the largest change, the gradient rule).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_cer.optim import sgd
from jax_cer.parity.golden import (
    GoldenFileError,
    file_sha256,
    load_arrays,
    missing_golden_hint,
    read_json,
    require_keys,
)
from jax_cer.parity.result import CheckResult, check_result, error_result
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.parity.weights import draw_tensor
from jax_cer.statedict import check_state_dict, entries_by_name, export_entries, load_entries
from jax_cer.text import BERT_NAMES, SentenceEncoder, TextClassifier, default_checkpoint
from jax_cer.text.lora import LORA_NAMES, apply_lora, lora_trainable
from jax_cer.training.step import cross_entropy

CASE = "text"
"""The name ``jax-cer repro --only`` selects the text rows by, and the case of their ``error`` row."""

NUMBER = (int, float)
MANIFEST_KEYS = {
    "arrays": dict,
    "npz_sha256": str,
    "checkpoint_sha256": str,
    "sentences": list,
    "lora": dict,
    "step": dict,
}
"""The keys of the text manifest and their JSON types (:func:`jax_cer.parity.golden.read_json`)."""
LORA_KEYS = {"targets": list, "rank": int, "alpha": NUMBER, "rslora": bool, "seed": int, "wrapped": list}
STEP_KEYS = {"lr": NUMBER, "weight_decay": NUMBER, "max_norm": NUMBER}


def load(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The text golden files of ``folder``: the manifest and the arrays, checked against the manifest's
    SHA-256 of ``minilm.npz`` (:func:`jax_cer.parity.golden.load_arrays`); raises GoldenFileError naming the
    damaged file."""
    manifest_path, npz = folder / "manifest.json", folder / "minilm.npz"
    if not manifest_path.is_file() or not npz.is_file():
        raise GoldenFileError(
            f"text golden files missing in {folder}: {missing_golden_hint('repro/make_text_golden.py')}"
        )
    manifest = read_json(manifest_path, MANIFEST_KEYS)
    require_keys(manifest["lora"], LORA_KEYS, f"{manifest_path}: 'lora'")
    require_keys(manifest["step"], STEP_KEYS, f"{manifest_path}: 'step'")
    return manifest, load_arrays(npz, manifest["arrays"], manifest_path, file_checksum=manifest["npz_sha256"])


def lora_start(wrapped: list[str], rank: int, hidden: int, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """The LoRA factors and head both sides start from, in the reference's names and layouts, drawn
    with :func:`jax_cer.parity.weights.draw_tensor` (B scaled by 0.05 so that the branch is a
    perturbation): ``<module>.lora_A`` ``[r, in]``, ``<module>.lora_B`` ``[out, r]``, ``classifier.*``."""
    shapes = {"classifier.weight": (num_classes, hidden), "classifier.bias": (num_classes,)}
    for m in wrapped:
        shapes[f"{m}.lora_A"] = (rank, hidden)
        shapes[f"{m}.lora_B"] = (hidden, rank)
    scale = {k: 0.05 if k.endswith("lora_B") else 1.0 for k in shapes}
    return {k: (draw_tensor(seed, k, shape, "float32") * scale[k]).astype(np.float32) for k, shape in shapes.items()}


LORA_TABLE = BERT_NAMES + LORA_NAMES
"""The reference's names of the LoRA classifier's trainable parameters: PEFT's ``lora_A`` / ``lora_B``
and the head's ``classifier.weight`` / ``classifier.bias`` (transposed Linear weights)."""


def check(folder: Path) -> list[CheckResult]:
    """The rows ``text_encoder`` (layers, end_to_end) and ``text_lora`` (logits, sgd_step) against ``folder``;
    one failed ``error`` row of case ``text`` when a golden file is missing or damaged, a ``text_encoder``
    ``load`` row when the checkpoint is missing or is not the one the golden files were made from."""
    t0 = time.perf_counter()
    try:
        manifest, ref = load(folder)
    except GoldenFileError as e:  # a missing or damaged golden file: the same row as the other cases'
        return [error_result(CASE, e, t0)]
    try:
        path = default_checkpoint()
    except (FileNotFoundError, RuntimeError) as e:
        return [CheckResult("text_encoder", "load", "-", float("inf"), 0.0, False, time.perf_counter() - t0, 0, str(e))]
    if file_sha256(path / "model.safetensors") != manifest["checkpoint_sha256"]:
        detail = f"{path / 'model.safetensors'} is not the checkpoint the golden files were made from"
        return [CheckResult("text_encoder", "load", "-", float("inf"), 0.0, False, time.perf_counter() - t0, 0, detail)]
    rows = []
    enc = SentenceEncoder.from_pretrained(path)
    with jax.default_matmul_precision("highest"):
        states, tok = enc.hidden_states(manifest["sentences"])
        ids_ok = np.array_equal(tok["input_ids"], ref["input_ids"]) and np.array_equal(
            tok["attention_mask"], ref["attention_mask"]
        )
        real = ref["attention_mask"].astype(bool)  # the golden states are packed: real tokens only
        errors = {
            ("embeddings" if i == 0 else f"layer_{i}"): (
                float(np.abs(s[real] - ref[f"hidden_{i}"]).max()) if ids_ok else float("inf")
            )
            for i, s in enumerate(states)
        }
        rows.append(
            check_result(
                "text_encoder", "layers", errors, TOLERANCES["text_layer"], t0, "" if ids_ok else "token ids differ"
            )
        )
        t1 = time.perf_counter()
        emb = enc.embed(manifest["sentences"])
        rows.append(
            check_result(
                "text_encoder",
                "end_to_end",
                {"embeddings": float(np.abs(emb - ref["embeddings"]).max())},
                TOLERANCES["text_end_to_end"],
                t1,
            )
        )

        # the LoRA classifier: the reference's factors and head, eval mode
        t2 = time.perf_counter()
        lora = manifest["lora"]
        model = TextClassifier(enc.model, 7, rngs=nnx.Rngs(0))
        wrapped = apply_lora(
            model, lora["targets"], rank=lora["rank"], alpha=lora["alpha"], rslora=lora["rslora"], rngs=nnx.Rngs(0)
        )
        if wrapped != lora["wrapped"]:
            detail = f"LoRA wraps {wrapped}, the reference {lora['wrapped']}"
            rows.append(CheckResult("text_lora", "load", "-", float("inf"), 0.0, False, 0.0, 0, detail))
            return rows

        # the trainable parameters under the reference's names, through the one conversion mechanism
        trainable = lora_trainable("classifier")
        entries = entries_by_name(model, LORA_TABLE, filter=trainable)
        before = lora_start(wrapped, lora["rank"], enc.dim, 7, lora["seed"])
        check_state_dict(entries, before, source="lora_start", target="the LoRA classifier's trainable parameters")
        load_entries(model, entries, before)
        names = sorted(before)
        model.eval()
        ids, mask, labels = (jnp.asarray(ref[k]) for k in ("input_ids", "attention_mask", "labels"))
        graphdef, params, rest = nnx.split(model, trainable, ...)

        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(ids, mask)
            return cross_entropy(logits, labels), logits

        (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
        step = manifest["step"]
        tx = optax.chain(
            optax.clip_by_global_norm(step["max_norm"]),
            sgd(step["lr"], weight_decay=step["weight_decay"]),
        )
        updates, _ = tx.update(grads, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        nnx.update(model, new)
        rows.append(
            check_result(
                "text_lora",
                "logits",
                {
                    "logits": float(np.abs(np.asarray(logits) - ref["logits"]).max()),
                    "loss": abs(float(loss) - float(ref["loss"])),
                },
                TOLERANCES["text_end_to_end"],
                t2,
            )
        )
        t3 = time.perf_counter()
        after = export_entries(model, entries)  # the reference's names and layouts
        scale = max(float(np.abs(ref[f"after/{n}"] - before[n]).max()) for n in names)
        deltas = {
            n: float(np.abs((after[n] - before[n]) - (ref[f"after/{n}"] - before[n])).max()) / scale for n in names
        }
        rows.append(
            check_result("text_lora", "sgd_step", deltas, TOLERANCES["text_step"], t3, "relative to the largest change")
        )
    return rows
