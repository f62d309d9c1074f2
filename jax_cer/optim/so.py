"""SO, the sparse optimizer of "Sparsity Outperforms Low-Rank Projections in Few-Shot Adaptation",
as an optax transformation with O(k) state (spec: ``shared/spec/sparse-optimizer.md``).

Per tensor of n entries, k = int(n * density) (in float64, as the original). Every ``refresh_every``
steps (at t = 1, T+1, 2T+1, ...) a uniformly random set M of k flat indices is drawn without
replacement. Moments live only on a support S of k entries. At step t, with g the gradient
(coupled L2 already added by ``optax.add_decayed_weights``)::

    S ∩ M:  m = b1 m + (1-b1) g      v = b2 v + (1-b2) g²
    S \\ M:  m = b1 m                 v = b2 v             (decay, as if g = 0)
    M \\ S:  m = (1-b1) g             v = (1-b2) g²        (fresh)
    on U = S ∪ M:  update = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)   (0 elsewhere)
    S = the k entries of U with the largest |m| (ties: smaller flat index), others dropped

i.e. Adam on the masked gradient, then keep the top-k |m| of each tensor. ``scale_by_so`` emits
``+update`` (like ``optax.scale_by_adam``); :func:`so` chains weight decay, ``scale_by_so`` and
the learning rate.

Leaves: matrices take the sparse path (the original supports exactly 2-D); tensors with more
axes raise unless ``allow_nd=True`` flattens them row-major. Tensors with fewer than two axes (biases, LayerNorm
scales, scalars; the original crashes on them) take the dense path: Adam with coupled L2, or
``dense`` selects leaves explicitly (the original's ``'dense': True`` group). A sparse leaf with
k = 0 is frozen (no update) and a warning names it, as the original silently does.

``faithful=True`` reproduces the original where it differs: its dense path applies the first-moment
bias correction twice (effective step ``1/(1-b1^t)`` times Adam's). The original's other
difference, pairing moments with the wrong gradient entries when an unstable sort reorders
overlapping coordinates of one row (|S ∩ M| >= 17), depends on torch's sort internals and cannot
be reproduced bit for bit: ``faithful=True`` keeps the correct pairing there (spec §3.1). Exact
ties in the top-k are broken toward the smaller flat index in both modes (the original's choice
is implementation-defined).

State per sparse leaf: ``support`` int32[k] (sorted flat indices; n marks an empty slot), ``mu``
and ``nu`` [k] in the parameter dtype, 12 bytes per entry in float32, plus, with
``inject_masks=True``, the current mask ``mask`` int32[k] (16 bytes per entry). Without
injection the mask of refresh j for leaf l is regenerated at every step from
``fold_in(fold_in(key, j), l)``, so nothing of size n and nothing mask-sized is kept.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax._src import numerics

log = logging.getLogger(__name__)


class SparseLeafState(NamedTuple):
    """Moments of one sparse leaf on its support (k entries)."""

    support: jax.Array  # int32[k]: sorted flat indices of the support S; n = empty slot
    mu: jax.Array  # [k] first moment on S, parameter dtype
    nu: jax.Array  # [k] second moment on S, parameter dtype
    mask: jax.Array | None  # int32[k] the current gradient mask M (inject_masks=True), else None
    # (None, not an empty array: orbax cannot save zero-size arrays)


class DenseLeafState(NamedTuple):
    """Adam moments of a dense leaf."""

    mu: jax.Array
    nu: jax.Array


class ScaleBySOState(NamedTuple):
    """State of :func:`scale_by_so`."""

    count: jax.Array  # int32 scalar: steps taken (the bias-correction step is count + 1)
    key: jax.Array  # uint32[2]: base PRNG key of the masks
    leaves: Any  # pytree like the params of SparseLeafState / DenseLeafState / None (frozen)


def sparse_k(n: int, density: float) -> int:
    """k = int(n * density), computed on the host in float64 like the original."""
    return int(np.float64(n) * np.float64(density))


def random_subset(key: jax.Array, n: int, k: int) -> jax.Array:
    """A uniformly random set of k distinct indices in [0, n), int32[k] in draw order.

    For k much smaller than n: draw candidates with replacement and keep the first k distinct
    ones in draw order (sequential rejection sampling, exactly uniform), redrawing in the rare
    case that too few are distinct; O(k log k) instead of permuting all n. Otherwise the first k
    of a random permutation.
    """
    if k == 0:
        return jnp.zeros((0,), jnp.int32)
    if 8 * k > n:
        return jax.random.permutation(key, n)[:k].astype(jnp.int32)
    c = k + 16 + int(4 * math.sqrt(k) + 2 * k * k / n)

    def draw(key):
        cand = jax.random.randint(key, (c,), 0, n, dtype=jnp.int32)
        order = jnp.argsort(cand, stable=True)
        sv = cand[order]
        first = jnp.concatenate([jnp.ones((1,), bool), sv[1:] != sv[:-1]])  # first draw of each value
        keep = jnp.zeros((c,), bool).at[order].set(first)
        rank = jnp.cumsum(keep) - 1
        out = jnp.zeros((k,), jnp.int32).at[jnp.where(keep & (rank < k), rank, k)].set(cand, mode="drop")
        return out, jnp.sum(keep) >= k

    def body(carry):
        key, _, _ = carry
        key, sub = jax.random.split(key)
        out, ok = draw(sub)
        return key, out, ok

    _, out, _ = jax.lax.while_loop(lambda c: ~c[2], body, body((key, jnp.zeros((k,), jnp.int32), False)))
    return out


def _membership(sorted_ref: jax.Array, queries: jax.Array) -> jax.Array:
    """For each query, whether it occurs in ``sorted_ref`` (ascending)."""
    pos = jnp.searchsorted(sorted_ref, queries)
    return sorted_ref[jnp.clip(pos, 0, sorted_ref.shape[0] - 1)] == queries


def _sparse_moments(support, mu, nu, mask, g_s, g_m, t, b1, b2, eps, n: int):
    """The O(k) part of one sparse leaf's step, batched over a leading axis of leaves.

    ``support``, ``mu``, ``nu``: [L, k] state; ``mask``: M, [L, k] in draw order; ``g_s``, ``g_m``:
    the gradient at the support and at the sorted mask, [L, k]. Returns the candidate flat
    indices of U = S ∪ M and their update values ([L, 2k], index n and value 0 outside U) and
    the pruned state (support sorted, n marks an empty slot).
    """
    k = support.shape[-1]
    dtype = g_s.dtype
    ms = jnp.sort(mask, axis=-1)
    member = jax.vmap(_membership)
    in_m = member(ms, support)  # S ∩ M (the sentinel n is never in M)
    new_m = ~member(support, ms)  # M \ S
    g_s = jnp.where(in_m, g_s, 0)
    mu_s = b1 * mu.astype(dtype) + (1 - b1) * g_s
    nu_s = b2 * nu.astype(dtype) + (1 - b2) * g_s * g_s
    mu_m, nu_m = (1 - b1) * g_m, (1 - b2) * g_m * g_m
    cand = jnp.concatenate([support, ms], axis=-1)
    cand_mu = jnp.concatenate([mu_s, mu_m], axis=-1)
    cand_nu = jnp.concatenate([nu_s, nu_m], axis=-1)
    valid = jnp.concatenate([support < n, new_m], axis=-1)  # U = S ∪ M, each index once
    tt = t.astype(dtype)
    bc1 = 1 - b1**tt
    bc2 = 1 - b2**tt
    step = jnp.where(valid, (cand_mu / bc1) / (jnp.sqrt(cand_nu / bc2) + eps), 0)
    key_idx = jnp.where(valid, cand, n)
    # prune: the k largest |m| of U, ties toward the smaller flat index
    order = jnp.argsort(key_idx, axis=-1, stable=True)
    score = jnp.take_along_axis(jnp.where(valid, jnp.abs(cand_mu), -jnp.inf), order, axis=-1)
    _, sel = jax.lax.top_k(score, k)
    chosen = jnp.take_along_axis(order, sel, axis=-1)
    chosen = jnp.take_along_axis(chosen, jnp.argsort(jnp.take_along_axis(key_idx, chosen, -1), axis=-1), -1)

    def pick(x):
        return jnp.take_along_axis(x, chosen, axis=-1)

    return key_idx, step, (pick(key_idx).astype(jnp.int32), pick(cand_mu), pick(cand_nu))


def _sparse_group(gs, states, masks, t, b1, b2, eps):
    """One step of a group of sparse leaves with equal n, k and dtypes (one batched computation
    instead of one per leaf: fewer, larger operations, and much shorter compiles).

    ``gs``: the dense gradients; ``masks``: [L, k] masks M. Returns the dense updates and new states.
    """
    n = gs[0].size
    dtype = jnp.promote_types(gs[0].dtype, jnp.float32)
    support = jnp.stack([st.support for st in states])
    flat = [g.reshape(-1).astype(dtype) for g in gs]
    ms = jnp.sort(masks, axis=-1)
    g_s = jnp.stack([f[jnp.minimum(support[i], n - 1)] for i, f in enumerate(flat)])
    g_m = jnp.stack([f[ms[i]] for i, f in enumerate(flat)])
    key_idx, step, (new_support, new_mu, new_nu) = _sparse_moments(
        support,
        jnp.stack([st.mu for st in states]),
        jnp.stack([st.nu for st in states]),
        masks,
        g_s,
        g_m,
        t,
        b1,
        b2,
        eps,
        n,
    )
    updates, new_states = [], []
    for i, (g, st) in enumerate(zip(gs, states, strict=True)):
        # a zero that XLA cannot prove equal across leaves (key_idx >= 0): a shared constant
        # buffer would be copied once per leaf before the in-place scatter
        zero = (key_idx[i, 0] < 0).astype(dtype)
        update = jnp.broadcast_to(zero, (n,)).at[key_idx[i]].add(step[i], mode="drop")
        updates.append(update.reshape(g.shape).astype(g.dtype))
        new_states.append(
            SparseLeafState(
                support=new_support[i],
                mu=new_mu[i].astype(st.mu.dtype),
                nu=new_nu[i].astype(st.nu.dtype),
                mask=None if st.mask is None else masks[i].astype(jnp.int32),
            )
        )
    return updates, new_states


def _dense_update(g, st: DenseLeafState, t, b1, b2, eps, faithful):
    dtype = jnp.promote_types(g.dtype, jnp.float32)
    gf = g.astype(dtype)
    mu = b1 * st.mu.astype(dtype) + (1 - b1) * gf
    nu = b2 * st.nu.astype(dtype) + (1 - b2) * gf * gf
    tt = t.astype(dtype)
    bc1 = 1 - b1**tt
    bc2 = 1 - b2**tt
    upd = (mu / bc1) / (jnp.sqrt(nu / bc2) + eps)
    upd = jnp.where(faithful, upd / bc1, upd)  # the original's dense path divides by bc1 twice
    return upd.astype(g.dtype), DenseLeafState(mu.astype(st.mu.dtype), nu.astype(st.nu.dtype))


def _is_leaf_state(x) -> bool:
    return x is None or isinstance(x, (SparseLeafState, DenseLeafState))


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def scale_by_so(
    density: float,
    refresh_every: int,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    seed: int = 0,
    faithful: bool = False,
    dense: Any = None,
    inject_masks: bool = False,
    allow_nd: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Rescales updates with SO (see the module docstring); emits ``+m̂/(sqrt(v̂)+eps)`` on U.

    Args:
      density: fraction of entries per tensor, k = int(n * density) (float64, static).
      refresh_every: T; masks are drawn at steps 1, T+1, 2T+1, ... and each is used T times.
      b1, b2, eps: Adam's constants (the original's class default b1 = 0.4; its runners use 0.9).
      seed: base key of the random masks.
      faithful: reproduce the original's dense-path double bias correction.
      dense: optional pytree (prefix) of bools: True leaves take the dense Adam path. Default:
        leaves with fewer than two axes.
      allow_nd: let leaves with more than two axes take the sparse path over their row-major
        flattening (an extension; without it such a leaf raises, as spec §3.3 asks).
      inject_masks: keep the current mask in the state so that masks passed to ``update(...,
        masks=...)`` on refresh steps are used for the next T steps (16 instead of 12 bytes per
        entry). Without it masks come from the key and passing ``masks`` is an error.

    ``update(updates, state, params=None, *, masks=None)``: ``masks`` is a pytree like the params
    with an int32[k] array of distinct row-major flat indices (or None) per sparse leaf; it is
    read only on refresh steps (t = 1 + jT) and ignored otherwise. A mask with a negative, an
    out-of-range or a repeated index raises a ValueError naming the leaf, the problem, the index
    and the leaf's size, e.g. ``mask for ['w'] (shape (4, 5), 20 entries): duplicate index 1;
    needs 4 distinct flat indices in [0, 20)``. Concrete masks (an eager call) are checked on every
    step, when ``update`` is called. Traced masks (``update`` inside ``jax.jit``) are checked on
    refresh steps, when the compiled step runs: a host callback raises that ValueError (JAX logs
    its traceback as "jax.debug.callback failed"), and the jitted call, or the first wait on its
    results (dispatch is asynchronous), raises a ``jax.errors.JaxRuntimeError`` whose text ends
    with the ValueError's line. This works under donation and a multi-device ``jit``; it makes
    every call of such a jitted step take JAX's Python dispatch path (a fixed cost per call, about a
    millisecond on a CPU). An update given no masks is compiled without a check.
    """
    if refresh_every is None or (
        not isinstance(refresh_every, jax.Array)
        and (
            isinstance(refresh_every, bool)
            or not isinstance(refresh_every, (int, np.integer))
            or int(refresh_every) < 1
        )
    ):
        raise ValueError(f"refresh_every must be an integer >= 1, got {refresh_every!r}")
    for name, value, low_open in (("b1", b1, False), ("b2", b2, False), ("eps", eps, True)):
        _check_constant(name, value, low_open)

    def init_fn(params):
        try:
            if isinstance(density, (str, bytes, bool)):
                raise TypeError(density)
            rho = float(density)
        except (TypeError, ValueError) as e:
            raise ValueError(f"density must be a number in [0, 1], got {density!r}") from e
        except jax.errors.ConcretizationTypeError as e:
            raise ValueError(
                "density must be a concrete number when the optimizer state is created (k per tensor is static); "
                "with optax.inject_hyperparams, list it in static_args=('density',)"
            ) from e
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {rho}")
        dense_tree = _dense_flags(params)
        paths = _paths(params)
        frozen = []

        def leaf_state(p, is_dense, path):
            if is_dense:
                return DenseLeafState(jnp.zeros_like(p), jnp.zeros_like(p))
            if jnp.ndim(p) < 2 or (jnp.ndim(p) > 2 and not allow_nd):
                raise ValueError(
                    f"leaf {path} has shape {tuple(jnp.shape(p))}: the sparse path takes matrices (the original "
                    "supports exactly 2-D); mark it dense (dense=...), or pass allow_nd=True to flatten tensors "
                    "with more than two axes row-major"
                )
            k = sparse_k(p.size, rho)
            if k == 0:
                frozen.append(path)
                return None
            n = p.size
            if n >= 2**31:
                raise ValueError(f"leaf {path}: {n} entries do not fit int32 flat indices")
            return SparseLeafState(
                support=jnp.full((k,), n, jnp.int32),
                mu=jnp.zeros((k,), p.dtype),
                nu=jnp.zeros((k,), p.dtype),
                mask=jnp.zeros((k,), jnp.int32) if inject_masks else None,
            )

        leaves, treedef = jax.tree.flatten(params)
        flags = treedef.flatten_up_to(dense_tree)
        states = [leaf_state(p, f, path) for p, f, path in zip(leaves, flags, paths, strict=True)]
        if frozen:
            log.warning(
                "SO: k = int(n * %s) = 0 for %d tensor(s), which stay frozen (as in the original): %s",
                rho,
                len(frozen),
                ", ".join(frozen),
            )
        return ScaleBySOState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            leaves=treedef.unflatten(states),
        )

    def _dense_flags(params):
        if dense is None:
            return jax.tree.map(lambda p: jnp.ndim(p) < 2, params)
        # a prefix pytree of bools: each flag covers the params below it
        return jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub), dense, params)

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        del params, extra_args
        if masks is not None and not inject_masks:
            raise ValueError(
                "masks were passed but this SO instance draws its masks from its key: build it with "
                "inject_masks=True to feed masks (the state then keeps the current mask)"
            )
        t = numerics.safe_increment(state.count)
        refresh = (state.count % refresh_every) == 0
        refresh_index = state.count // refresh_every
        leaves_g, treedef = jax.tree.flatten(updates)
        paths = _paths(updates)
        try:
            states = treedef.flatten_up_to(state.leaves)
        except ValueError:
            is_state = lambda x: x is None or isinstance(x, (SparseLeafState, DenseLeafState))  # noqa: E731
            known = _paths(jax.tree.map(lambda _: 0, state.leaves, is_leaf=is_state))
            extra = ", ".join(sorted(set(paths) - set(known))) or "none"
            missing = ", ".join(sorted(set(known) - set(paths))) or "none"
            raise ValueError(
                "updates do not have the structure of the parameters SO was initialised with: "
                f"not among the parameters: {extra}; missing: {missing}"
            ) from None
        for g, st, path in zip(leaves_g, states, paths, strict=True):
            _check_gradient(g, st, path or "the root leaf", density)
        given = treedef.flatten_up_to(masks) if masks is not None else [None] * len(leaves_g)
        period_key = jax.random.fold_in(state.key, refresh_index)
        new_updates: list = [None] * len(leaves_g)
        new_states: list = [None] * len(leaves_g)
        groups: dict[tuple, list[int]] = {}
        for leaf_id, (g, st) in enumerate(zip(leaves_g, states, strict=True)):
            if st is None:  # frozen (k = 0)
                new_updates[leaf_id] = jnp.zeros_like(g)
            elif isinstance(st, DenseLeafState):
                new_updates[leaf_id], new_states[leaf_id] = _dense_update(g, st, t, b1, b2, eps, faithful)
            else:
                sig = (g.size, st.support.shape[0], g.dtype, st.mu.dtype)
                groups.setdefault(sig, []).append(leaf_id)
        for (n, k, _, _), ids in groups.items():
            drawn = jax.vmap(lambda i: random_subset(jax.random.fold_in(period_key, i), n, k))(
                jnp.asarray(ids, jnp.uint32)
            )
            if inject_masks:
                rows = [
                    drawn[j] if given[i] is None else _check_mask(given[i], n, k, paths[i], leaves_g[i].shape)
                    for j, i in enumerate(ids)
                ]
                drawn = jnp.where(refresh, jnp.stack(rows), jnp.stack([states[i].mask for i in ids]))
                if any(isinstance(given[i], jax.core.Tracer) for i in ids):
                    _check_traced_masks(drawn, refresh, n, [(paths[i], leaves_g[i].shape) for i in ids])
            us, ss = _sparse_group([leaves_g[i] for i in ids], [states[i] for i in ids], drawn, t, b1, b2, eps)
            for i, u, s_ in zip(ids, us, ss, strict=True):
                new_updates[i], new_states[i] = u, s_
        new_state = ScaleBySOState(count=t, key=state.key, leaves=treedef.unflatten(new_states))
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_constant(name: str, value: Any, low_open: bool) -> None:
    """b1, b2 in [0, 1) (1 would divide by 1 - b^t = 0); eps finite and > 0 (0 divides 0 by 0 where a
    gradient entry is 0). Traced values (``optax.inject_hyperparams``) are not checked."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        ok = not isinstance(value, (str, bytes, bool)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        v = float(value)
        ok = 0.0 < v if low_open else 0.0 <= v < 1.0
    if not ok:
        want = "a finite number > 0" if low_open else "a number in [0, 1)"
        raise ValueError(f"{name} must be {want}, got {value!r}")


def _check_gradient(g: Any, st: Any, path: str, density: Any) -> None:
    """An update leaf fits the state SO keeps for it: a floating array, of the parameter's shape
    (dense leaves), or of a size that gives the same k (sparse leaves: the state is O(k) and does
    not record the shape)."""
    if not (hasattr(g, "shape") and hasattr(g, "dtype")) or not jnp.issubdtype(g.dtype, jnp.floating):
        what = f"dtype {g.dtype}" if hasattr(g, "dtype") else type(g).__name__
        raise ValueError(f"update for {path}: expected a floating-point array, got {what}")
    if isinstance(st, DenseLeafState) and tuple(g.shape) != tuple(st.mu.shape):
        raise ValueError(f"update for {path} has shape {tuple(g.shape)}, the parameter {tuple(st.mu.shape)}")
    if not isinstance(st, SparseLeafState):
        return
    try:
        k = sparse_k(math.prod(g.shape), float(density))
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # a traced density fails at init already
    if k != st.mu.shape[0]:
        raise ValueError(
            f"update for {path} has shape {tuple(g.shape)} ({math.prod(g.shape)} entries), which does not fit the "
            f"{st.mu.shape[0]} support entries SO keeps for that parameter (updates have the parameters' shapes)"
        )


_MASK_PROBLEMS = ("negative index {}", "index {} is out of range", "duplicate index {}")


def _mask_text(path: str, shape: tuple, problem: str, n: int, k: int) -> str:
    path = path or "the root leaf"
    return (
        f"mask for {path} (shape {tuple(shape)}, {n} entries): {problem}; needs {k} distinct flat indices in [0, {n})"
    )


def _mask_message(path: str, shape: tuple, arr: np.ndarray, n: int, k: int) -> str | None:
    """The problem with a concrete mask ``arr`` (int[k]) for a leaf of n entries, or None if it is valid."""
    arr = np.sort(np.asarray(arr).astype(np.int64).ravel())
    if arr.size and arr[0] < 0:
        problem = _MASK_PROBLEMS[0].format(arr[0])
    elif arr.size and arr[-1] >= n:
        problem = _MASK_PROBLEMS[1].format(arr[-1])
    elif arr.size > 1 and np.any(arr[1:] == arr[:-1]):
        problem = _MASK_PROBLEMS[2].format(arr[1:][arr[1:] == arr[:-1]][0])
    else:
        return None
    return _mask_text(path, shape, problem, n, k)


def _check_mask(m, n: int, k: int, path: str, shape: tuple) -> jax.Array:
    """Checks the shape and dtype of a mask and, when it is concrete (eager calls), its indices."""
    m = jnp.asarray(m)
    if m.shape != (k,) or not jnp.issubdtype(m.dtype, jnp.integer):
        raise ValueError(f"mask for {path or 'the root leaf'}: expected int32[{k}], got {m.dtype}{list(m.shape)}")
    if not isinstance(m, jax.core.Tracer):
        message = _mask_message(path, shape, np.asarray(m), n, k)
        if message is not None:
            raise ValueError(message)
    info, i32 = jnp.iinfo(m.dtype), np.iinfo(np.int32)
    if info.max > i32.max or info.min < i32.min:  # saturate, so that a bad index stays bad in int32
        m = jnp.clip(m, max(info.min, i32.min), i32.max)
    return m.astype(jnp.int32)


def _check_traced_masks(masks: jax.Array, refresh: jax.Array, n: int, leaves: list[tuple[str, tuple]]) -> None:
    """Validates the masks of one group (int32[L, k], the rows in use this step) inside a traced update.

    A branch taken on refresh steps only tests the sorted rows in O(k) (XLA shares the sort with
    the update's own); when a row is bad, a nested branch finds the first problem (leaf, kind,
    index) and a host callback raises the ValueError of the eager check. The jitted call then
    fails with a ``JaxRuntimeError`` whose text contains that message. The callback is
    ``partitioned``: under a multi-device ``jit`` every device raises at the same point (a callback
    on one device would leave the others waiting in their next collective). Its effect takes the
    jitted call off JAX's C++ dispatch path, a fixed cost per call.
    """
    k = masks.shape[-1]

    def check(ms, refresh):
        dup = ms[:, 1:] == ms[:, :-1]
        kinds = jnp.stack([ms[:, 0] < 0, ms[:, -1] >= n, jnp.any(dup, axis=-1)], axis=-1)  # [L, 3]
        jax.lax.cond(jnp.any(kinds), locate, lambda *_: None, ms, dup, kinds, refresh)

    def locate(ms, dup, kinds, refresh):
        rows = jnp.arange(ms.shape[0])
        second = jnp.argmax(dup, -1) + 1 if k > 1 else jnp.zeros_like(rows)  # a duplicate's second occurrence
        values = jnp.stack([ms[:, 0], ms[:, -1], ms[rows, second]], -1)
        row = jnp.argmax(jnp.any(kinds, -1))
        kind = jnp.argmax(kinds[row])  # the first problem in the order of the eager check
        # the flag repeats the branch conditions: under vmap both branches run, for every element
        flag = refresh & kinds[row, kind]
        jax.debug.callback(fail, flag, row, kind, values[row, kind], partitioned=True)

    def fail(flag, row, kind, value) -> None:
        if flag:
            path, shape = leaves[int(row)]
            raise ValueError(_mask_text(path, shape, _MASK_PROBLEMS[int(kind)].format(int(value)), n, k))

    jax.lax.cond(refresh, check, lambda *_: None, jnp.sort(masks, axis=-1), refresh)


def so(
    learning_rate: optax.ScalarOrSchedule,
    *,
    density: float,
    refresh_every: int,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    seed: int = 0,
    faithful: bool = False,
    dense: Any = None,
    inject_masks: bool = False,
    allow_nd: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The SO optimizer: coupled L2 weight decay, :func:`scale_by_so`, then the learning rate.

    ``optax.chain(optax.add_decayed_weights(weight_decay), scale_by_so(...),
    optax.scale_by_learning_rate(learning_rate))``; the weight decay is skipped when it is 0.
    See :func:`scale_by_so` for the arguments and ``update(..., masks=...)``.
    """
    parts = []
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(scale_by_so(density, refresh_every, b1, b2, eps, seed, faithful, dense, inject_masks, allow_nd))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
