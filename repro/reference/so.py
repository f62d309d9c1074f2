"""PyTorch reference of the SO optimizer, written from ``shared/spec/sparse-optimizer.md`` (§2, §3.2, §6.3).

Sparse tensors (``'dense': False`` groups) follow the step of spec §2.2 with the *intended* pairing of
moments and gradients (the original's unstable-sort mispairing, §3.1, is not reproduced) and the
normative tie rule (equal |m|: the smaller flat index wins). Dense tensors (``'dense': True``) follow
§3.2: Adam with coupled L2, or with ``faithful=True`` the original's double first-moment bias
correction. Masks come from ``mask_fn(leaf_id, refresh_index, n, k)`` when given (§6.3), else from
``torch.randperm(n)[:k]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

MaskFn = Callable[[int, int, int, int], torch.Tensor]


class SO(torch.optim.Optimizer):
    """SO(params, lr, betas, eps, weight_decay, density_ratio, T, mask_fn=None, faithful=False)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.4, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density_ratio: float = 0.1,
        T: int = 30,
        mask_fn: MaskFn | None = None,
        faithful: bool = False,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.density_ratio = density_ratio
        self.T = T
        self.mask_fn = mask_fn
        self.faithful = faithful

    @torch.no_grad()
    def step(self):
        leaf_id = 0
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    leaf_id += int(not group["dense"])
                    continue
                g = p.grad + wd * p if wd != 0 else p.grad
                if group["dense"]:
                    self._dense_step(p, g, lr, b1, b2, eps)
                else:
                    self._sparse_step(p, g, lr, b1, b2, eps, leaf_id)
                    leaf_id += 1
                p.grad = None

    def _dense_step(self, p, g, lr, b1, b2, eps):
        st = self.state[p]
        if not st:
            st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        st["step"] += 1
        t = st["step"]
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        m_hat = st["m"] / bc1 if self.faithful else st["m"]
        p.sub_((lr / bc1) * m_hat / ((st["v"] / bc2).sqrt() + eps))

    def _sparse_step(self, p, g, lr, b1, b2, eps, leaf_id):
        st = self.state[p]
        n = p.numel()
        k = int(np.float64(n) * np.float64(self.density_ratio))
        if not st:
            st.update(step=0, iteration_count=0, refreshes=0, mask=None)
            st.update(support=torch.zeros(0, dtype=torch.long), m=p.new_zeros(0), v=p.new_zeros(0))
        if st["step"] == 0 or st["iteration_count"] == self.T:  # refresh at t = 1, T+1, 2T+1, ...
            if self.mask_fn is not None:
                mask = torch.as_tensor(self.mask_fn(leaf_id, st["refreshes"], n, k), dtype=torch.long)
            else:
                mask = torch.randperm(n)[:k]
            st["mask"], st["iteration_count"] = mask, 1
            st["refreshes"] += 1
        else:
            st["iteration_count"] += 1
        st["step"] += 1
        t = st["step"]
        if k == 0:
            return
        gf = g.reshape(-1)
        support, mask = st["support"], st["mask"]
        in_m = torch.isin(support, mask)  # S ∩ M (else S \ M: decay)
        g_s = torch.where(in_m, gf[support], torch.zeros_like(st["m"]))
        m_s = b1 * st["m"] + (1 - b1) * g_s
        v_s = b2 * st["v"] + (1 - b2) * g_s * g_s
        fresh = mask[~torch.isin(mask, support)]  # M \ S: no history
        g_f = gf[fresh]
        u_idx = torch.cat([support, fresh])
        u_m = torch.cat([m_s, (1 - b1) * g_f])
        u_v = torch.cat([v_s, (1 - b2) * g_f * g_f])
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        flat = p.view(-1)
        flat[u_idx] -= (lr / bc1) * u_m / ((u_v / bc2).sqrt() + eps)
        # prune to the k largest |m|; ties: the smaller flat index first
        by_index = torch.argsort(u_idx, stable=True)
        u_idx, u_m, u_v = u_idx[by_index], u_m[by_index], u_v[by_index]
        keep = torch.argsort(-u_m.abs(), stable=True)[:k]
        keep = keep[torch.argsort(u_idx[keep])]
        st["support"], st["m"], st["v"] = u_idx[keep], u_m[keep], u_v[keep]
