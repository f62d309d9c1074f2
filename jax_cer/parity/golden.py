"""Checks the JAX models against golden reference files produced by the PyTorch reference.

A golden *case* (see ``repro/make_golden.py``) holds the inputs, the outputs, named
intermediates, gradients of a per-frame cross-entropy loss with respect to the inputs and the
trainable weights, and (for training-mode cases) the BatchNorm statistics after the forward
pass. Weights are not stored: both sides draw them with :mod:`jax_cer.parity.weights` from the
recorded seed, and their sha256 are checked first.

Checks per case, with the tolerances of :data:`jax_cer.parity.tolerances.TOLERANCES`:

* ``layer``: every stored intermediate computed by its own stage from the *reference* values
  of its inputs (max abs error <= 1e-5): a failure names the layer that differs.
* ``forward``: the whole forward pass from the inputs; logits and every intermediate (<= 1e-4).
* ``grad input`` / ``grad params``: gradients in float64 on both sides (the models are
  piecewise linear: an fp32 gradient jumps wherever two correct implementations round a
  pre-activation to opposite sides of zero), max abs error relative to the reference
  tensor's max magnitude (<= 1e-4; see :func:`_grad_error`); gradients the reference reports
  as ``None`` (modules never called or whose output is discarded) must be exactly zero.
* ``state``: running statistics after a training-mode forward (<= 1e-4).

fp32 with full-precision matmuls throughout (``jax.default_matmul_precision("highest")``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cer.models.configs import config_for
from jax_cer.models.convert import build_model, from_original_state_dict, to_original_state_dict, torch_entries
from jax_cer.models.graph import run_stage_from
from jax_cer.parity.result import CheckResult, check_result, error_result
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.parity.weights import canonical_key, draw_state_dict, sample_indices, sha256
from jax_cer.training.step import cross_entropy, graph_forward, trainable_filter


def default_golden_dir() -> Path:
    """``$JAX_CER_GOLDEN``, or the golden files shipped inside the package (``jax_cer/parity/golden``)."""
    env = os.environ.get("JAX_CER_GOLDEN")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "golden"


@dataclasses.dataclass
class GoldenCase:
    """A case's manifest entry and arrays (from files, or built in memory by a live test)."""

    name: str
    meta: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}


class GoldenFileError(RuntimeError):
    """A golden file is missing, or differs from its manifest (edited or corrupted)."""


def missing_golden_hint(script: str) -> str:
    """Where golden files come from, for the message of a missing one: they ship inside the package,
    and ``script`` (e.g. ``repro/make_golden.py``) of the source repository regenerates them."""
    return (
        "the golden files ship with the jax-cer package (reinstall it, or pass --golden-dir / set "
        f"JAX_CER_GOLDEN to a folder that holds them); in the source repository, {script} regenerates them "
        "(needs torch)"
    )


MANIFEST_NAME = "manifest.json"
"""The file name of a golden folder's manifest (the fusion models', ``so/`` and ``text/``)."""

CASE_KEYS: dict[str, type] = {"file": str, "model": str, "seed_weights": int, "loss_key": str, "arrays": dict}
"""The keys every fusion case of the manifest holds, and their JSON types."""

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(types: type | tuple[type, ...]) -> str:
    """``object``, ``array``, ``number or integer``: JSON's names for Python types, for messages."""
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_JSON_TYPES.get(t, t.__name__) for t in types)


def require_keys(
    entry: Mapping[str, Any], keys: Mapping[str, type | tuple[type, ...]], where: str, *, optional: bool = False
) -> None:
    """Raises GoldenFileError unless ``entry`` (a JSON object of a manifest; ``where`` names it in the
    message, e.g. ``golden/manifest.json: case 'tcn'``) holds every key of ``keys`` with its JSON type;
    with ``optional`` only the types of the keys present are checked."""
    if not isinstance(entry, Mapping):
        raise GoldenFileError(f"{where} is a JSON {_json_type(type(entry))}, expected an object")
    missing = [k for k in keys if k not in entry]
    if missing and not optional:
        raise GoldenFileError(f"{where} lacks the required key(s) {missing}; edited or corrupted?")
    for key, types in keys.items():
        if key in entry and not isinstance(entry[key], types):
            raise GoldenFileError(
                f"{where}: {key!r} is a JSON {_json_type(type(entry[key]))}, expected a JSON {_json_type(types)}"
            )


def read_json(path: Path, keys: Mapping[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """A manifest's JSON object, holding the required ``keys`` (key -> type, see :func:`require_keys`).
    Raises GoldenFileError naming the file (and, for invalid JSON, the line and column)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise GoldenFileError(f"{path} is not UTF-8 text (byte {e.start}); edited or corrupted?") from None
    except json.JSONDecodeError as e:
        raise GoldenFileError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); edited or corrupted?"
        ) from None
    except OSError as e:
        raise GoldenFileError(f"{path} cannot be read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise GoldenFileError(f"{path} holds a JSON {_json_type(type(data))}, expected an object (a golden manifest)")
    require_keys(data, keys or {}, str(path))
    return data


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``; GoldenFileError names the file (and the key) when it
    is truncated, corrupted or not an ``.npz`` archive."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise GoldenFileError(
            f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); truncated or corrupted?"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GoldenFileError(f"{path} holds a single array, expected an .npz archive of named arrays")
    arrays = {}
    with data:
        for key in data.files:
            try:
                arrays[key] = data[key]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
                raise GoldenFileError(
                    f"{path}: key {key!r} cannot be read ({type(e).__name__}: {e}); truncated or corrupted?"
                ) from None
    return arrays


def verify_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], listed: Mapping[str, Any], manifest: Path, *, checksum: bool = True
) -> None:
    """Raises GoldenFileError unless ``arrays`` (of golden file ``path``) are exactly the arrays the
    manifest lists (``listed``: key -> ``sha256`` and, optionally, ``shape`` and ``dtype``). With
    ``checksum`` every key must have its sha256 (a manifest that holds the file's checksum instead
    passes ``checksum=False``). The message names the file and the keys."""
    for key, entry in listed.items():
        require_keys(entry, {"sha256": str} if checksum else {}, f"{manifest}: key {key!r} of {path.name}")
        require_keys(entry, {"shape": list, "dtype": str}, f"{manifest}: key {key!r} of {path.name}", optional=True)
    missing, extra = [k for k in listed if k not in arrays], [k for k in arrays if k not in listed]
    if missing:
        raise GoldenFileError(f"{path} lacks the key(s) {missing[:10]} listed in {manifest.name}; edited or corrupted?")
    if extra:
        raise GoldenFileError(f"{path} holds key(s) {extra[:10]} not listed in {manifest.name}; edited or corrupted?")
    for key, entry in listed.items():
        a = arrays[key]
        if "shape" in entry and list(a.shape) != entry["shape"]:
            raise GoldenFileError(
                f"{path}: key {key!r} has shape {list(a.shape)}, {manifest.name} lists {entry['shape']}"
            )
        if "dtype" in entry and str(a.dtype) != entry["dtype"]:
            raise GoldenFileError(f"{path}: key {key!r} has dtype {a.dtype}, {manifest.name} lists {entry['dtype']}")
    bad = [k for k, entry in listed.items() if "sha256" in entry and sha256(arrays[k]) != entry["sha256"]]
    if bad:
        raise GoldenFileError(
            f"{path} does not match the checksum in {manifest.name} for key(s) {bad[:10]}: the arrays differ from "
            "the manifest (edited or corrupted?)"
        )


def load_arrays(
    path: Path, listed: Mapping[str, Any], manifest: Path, *, file_checksum: str | None = None
) -> dict[str, np.ndarray]:
    """The arrays of golden file ``path``, verified against ``manifest``: ``listed`` maps each key to
    its entry (see :func:`verify_arrays`); ``file_checksum``, where the manifest records the whole file's
    checksum instead of one per key, is compared first. Every golden case (the fusion models, ``so``,
    ``text``) reads its arrays here; a damaged file raises GoldenFileError naming the file and key,
    which ``jax-cer repro`` reports as that case's failed row."""
    arrays = read_npz(path)
    if file_checksum is not None and file_sha256(path) != file_checksum:
        raise GoldenFileError(f"{path} does not match the checksum in {manifest.name}; edited or corrupted?")
    verify_arrays(path, arrays, listed, manifest, checksum=file_checksum is None)
    return arrays


def load_manifest(golden_dir: Path | None = None) -> dict[str, Any]:
    """The golden manifest (``manifest.json``: cases, seeds, shapes, sha256 of every array) of
    ``golden_dir`` (default :func:`default_golden_dir`). Raises GoldenFileError when it is missing,
    is not valid JSON, or lacks the ``cases`` object."""
    golden_dir = Path(golden_dir or default_golden_dir())
    path = golden_dir / MANIFEST_NAME
    if not path.is_file():
        where = ""
        if not golden_dir.is_dir():
            where = f" ({golden_dir} {'is not a folder' if golden_dir.exists() else 'does not exist'})"
        raise GoldenFileError(f"no golden manifest at {path}{where}: {missing_golden_hint('repro/make_golden.py')}")
    manifest = read_json(path, {"cases": dict})
    require_keys(manifest, {"weights_sha256": dict, "producer": dict, "command": str}, str(path), optional=True)
    for name, meta in manifest["cases"].items():
        require_keys(meta, {}, f"{path}: case {name!r}")  # an object: the checks are planned from it
    return manifest


def load_case(name: str, manifest: Mapping[str, Any], golden_dir: Path | None = None) -> GoldenCase:
    """Reads one case and verifies every array against the manifest's sha256 (:func:`load_arrays`)."""
    golden_dir = Path(golden_dir or default_golden_dir())
    if name not in manifest["cases"]:
        raise KeyError(f"no golden case {name!r}; cases are {sorted(manifest['cases'])}")
    meta = manifest["cases"][name]
    manifest_path = golden_dir / MANIFEST_NAME
    require_keys(meta, CASE_KEYS, f"{manifest_path}: case {name!r}")
    path = golden_dir / meta["file"]
    if not path.is_file():
        raise GoldenFileError(
            f"golden file {path} is missing (listed in the manifest): {missing_golden_hint('repro/make_golden.py')}"
        )
    arrays = load_arrays(path, meta["arrays"], manifest_path)
    if "base" in meta:  # shared inputs (and, for MT/JMT fixed, the intermediates up to the fusion)
        if meta["base"] not in manifest["cases"]:
            raise GoldenFileError(f"{manifest_path}: case {name!r} has base {meta['base']!r}, which is not a case")
        base = load_case(meta["base"], manifest, golden_dir).arrays
        inherit = ("input/", "inter/") if meta.get("inherit_intermediates") else ("input/",)
        arrays = {**{k: v for k, v in base.items() if k.startswith(inherit)}, **arrays}
    meta = {**meta, "weights_sha256": manifest.get("weights_sha256", {}).get(meta.get("weights"))}
    return GoldenCase(name, meta, arrays)


# -- model construction ------------------------------------------------------------------
def jax_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {**meta.get("config", {}), **meta.get("jax_config", {})}


def build_case_model(meta: Mapping[str, Any], attention_fn=None):
    """Draws the case's weights from its seed, checks their sha256, loads them."""
    name, config = meta["model"], jax_config(meta)
    cfg = config_for(name, **config)
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    rows = [(e.key, e.torch_shape, e.torch_dtype) for e in torch_entries(abstract)]
    weights = draw_state_dict(rows, meta["seed_weights"])
    expected = meta.get("weights_sha256")
    if expected is not None:
        bad = [k for k, v in weights.items() if expected.get(k) != sha256(v)]
        bad += [k for k in expected if k not in weights]
        if bad:
            raise GoldenFileError(
                f"case {meta['model']}: synthetic weights differ from the reference's for {len(bad)} keys "
                f"(first: {bad[:5]}); the key lists or the weight generator changed"
            )
    return from_original_state_dict(name, weights, attention_fn=attention_fn, **config)


# -- comparisons ---------------------------------------------------------------------------
def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_layers(case: GoldenCase, model) -> CheckResult:
    """Each stored intermediate from its stage applied to reference inputs (tolerance ``layer``)."""
    t0 = time.perf_counter()
    inputs = {k: jnp.asarray(v) for k, v in case.group("input/").items()}
    ref = case.group("inter/")
    stages, _ = model.graph({k: v.shape for k, v in inputs.items()})
    names = [s.name for s in stages]
    unknown = sorted(set(ref) - set(names))
    if unknown:
        raise GoldenFileError(f"case {case.name}: reference intermediates with no JAX stage: {unknown}")
    known = {**inputs, **{k: jnp.asarray(v) for k, v in ref.items()}}
    errors = {}
    for name in names:
        if name in ref:
            errors[name] = _max_abs(run_stage_from(stages, known, name), ref[name])
    return check_result(case.name, "layer", errors, TOLERANCES["layer"], t0)


def _split(model, name: str):
    return nnx.split(model, trainable_filter(name), ...)


def check_forward(case: GoldenCase, model) -> list[CheckResult]:
    """End-to-end fp32 forward (jit): logits, loss, every intermediate; in training mode also
    the BatchNorm statistics after the pass."""
    meta = case.meta
    train = meta.get("mode", "eval") == "train"
    inputs = {k: jnp.asarray(v) for k, v in case.group("input/").items()}
    labels = jnp.asarray(case.arrays["labels"])
    if train:
        model.train()
    graphdef, params, rest = _split(model, meta["model"])

    @jax.jit
    def forward(params, rest, inputs):
        m = nnx.merge(graphdef, params, rest)
        env = graph_forward(m, inputs)
        loss = cross_entropy(env[meta["loss_key"]], labels)
        return loss, env, nnx.state(m)

    t0 = time.perf_counter()
    loss, env, state_after = jax.block_until_ready(forward(params, rest, inputs))
    errors = {"output": _max_abs(env["__output__"], case.arrays["output"]), "loss": _max_abs(loss, case.arrays["loss"])}
    errors.update({k: _max_abs(env[k], v) for k, v in case.group("inter/").items()})
    results = [
        check_result(case.name, "forward", errors, TOLERANCES["forward"], t0, "outputs, loss, intermediates (fp32)")
    ]
    if train:
        t0 = time.perf_counter()
        after = to_original_state_dict(model, values=state_after)
        errors = {
            k: _max_abs(after[k], v) if k in after else float("inf") for k, v in case.group("state_after/").items()
        }
        results.append(
            check_result(case.name, "state", errors, TOLERANCES["state"], t0, "BatchNorm statistics after the pass")
        )
        model.eval()
    return results


def _f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def check_grads(case: GoldenCase, model) -> list[CheckResult]:
    """Gradients of the mean per-frame cross-entropy w.r.t. the inputs and the trainable
    weights, float64 on both sides (see ``repro/make_golden.py``), relative to the reference's
    largest gradient entry; gradients the reference leaves ``None`` must be exactly zero."""
    meta = case.meta
    train = meta.get("mode", "eval") == "train"
    if train:
        model.train()
    with jax.enable_x64(True):
        graphdef, params, rest = _split(model, meta["model"])
        params, rest = _f64(params), _f64(rest)
        inputs = {k: jnp.asarray(v, jnp.float64) for k, v in case.group("input/").items()}
        labels = jnp.asarray(case.arrays["labels"])

        def loss_fn(params, inputs):
            # fresh Variables at this trace level: BatchNorm updates its statistics in training mode
            m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
            return cross_entropy(graph_forward(m, inputs)[meta["loss_key"]], labels)

        t0 = time.perf_counter()
        g_params, g_inputs = jax.block_until_ready(jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(params, inputs))
        ours = to_original_state_dict(model, values=g_params, trainable_only=True)
    if train:
        model.eval()
    compute = time.perf_counter() - t0

    t0 = time.perf_counter()
    none_inputs = set(meta.get("grad_none_inputs", []))
    floor = TOLERANCES["grad_floor"] * max(
        float(np.max(np.abs(v))) for k, v in case.arrays.items() if k.startswith("grad_")
    )
    errors = {
        k: _grad_error(g, case.arrays.get(f"grad_input/{k}"), k in none_inputs, f"input {k}", floor)
        for k, g in g_inputs.items()
    }
    results = [
        check_result(case.name, "grad input", errors, TOLERANCES["grad"], t0, "float64, relative to max |ref grad|")
    ]
    results[0].seconds += compute

    t0 = time.perf_counter()
    sampled = meta.get("grad_sampled", {})
    none_params = set(meta.get("grad_none", []))
    listed = set(case.group("grad_param/")) | none_params
    missing = sorted(k for k in ours if canonical_key(k) == k and k not in listed)
    if missing:
        raise GoldenFileError(f"case {case.name}: trainable weights without a reference gradient: {missing[:10]}")
    errors = {}
    for key in sorted(listed):
        if key not in ours:
            errors[key] = float("inf")
            continue
        g, ref = ours[key], case.arrays.get(f"grad_param/{key}")
        if key in sampled and ref is not None:
            g = g.reshape(-1)[sample_indices(meta["seed_weights"], key, g.size, sampled[key])]
        errors[key] = _grad_error(g, ref, key in none_params, key, floor)
    detail = f"{len(listed)} tensors ({len(sampled)} sampled, {len(none_params)} never reached by the loss), float64"
    results.append(check_result(case.name, "grad params", errors, TOLERANCES["grad"], t0, detail))
    return results


def _grad_error(ours, ref, must_be_zero: bool, what: str, floor: float = 0.0) -> float:
    """``max |ours - ref| / max(max |ref|, floor)``; ``floor`` (``TOLERANCES["grad_floor"]`` times the case's
    largest reference gradient) covers tensors whose gradient is zero in exact arithmetic, such
    as a bias right before a training-mode BatchNorm, where both sides hold only rounding noise."""
    ours = np.asarray(ours, np.float64)
    if must_be_zero:
        return 0.0 if not np.any(ours) else float("inf")
    if ref is None:
        raise GoldenFileError(f"no reference gradient for {what}")
    scale = max(float(np.max(np.abs(ref))), floor, 1e-300)
    return _max_abs(ours, ref) / scale


def case_checks(meta: Mapping[str, Any], *, layers: bool = True) -> list[str]:
    """The checks :func:`run_case` reports for a case (its manifest entry ``meta``), in order:
    ``layer`` (eval-mode cases, unless ``layers`` is false), ``forward``, ``state`` (training-mode
    cases), ``grad input``, ``grad params``."""
    train = meta.get("mode", "eval") == "train"
    checks = ["layer"] if layers and not train else []
    return [*checks, "forward", *(["state"] if train else []), "grad input", "grad params"]


def run_case(case: GoldenCase, *, layers: bool = True, attention_fn=None) -> list[CheckResult]:
    """All checks of one case (see :func:`case_checks`); exceptions become failed rows naming the error."""
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        try:
            model = build_case_model(case.meta, attention_fn)
            results = []
            if layers and case.meta.get("mode", "eval") == "eval":
                results.append(check_layers(case, model))
            results += check_forward(case, model)
            results += check_grads(case, model)
            return results
        except Exception as e:
            return [error_result(case.name, e, t0)]


def run_all(
    only: Iterable[str] | None = None, golden_dir: Path | None = None, *, layers: bool = True, progress=None
) -> list[CheckResult]:
    """Runs every case of the manifest (or those named in ``only``)."""
    manifest = load_manifest(golden_dir)
    names = list(manifest["cases"])
    if only:
        only = list(only)
        unknown = [n for n in only if n not in names]
        if unknown:
            raise KeyError(f"unknown golden case(s) {unknown}; cases are {names}")
        names = [n for n in names if n in only]
    results = []
    for name in names:
        if progress:
            progress(name)
        results += run_case(load_case(name, manifest, golden_dir), layers=layers)
    return results
