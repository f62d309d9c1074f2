"""The dense formulation of SO (spec §4) in numpy: the normative reference for random checks.

"Adam on the masked gradient, then keep the top-k |m| entries of each tensor": dense m, v, an
explicit boolean support S, masks M of k flat indices.
"""

from __future__ import annotations

import numpy as np


class DenseSO:
    def __init__(self, w, k, lr, b1, b2, eps, wd, refresh_every):
        self.w = np.array(w, dtype=np.float64)
        self.k, self.lr, self.b1, self.b2, self.eps, self.wd, self.T = k, lr, b1, b2, eps, wd, refresh_every
        self.m = np.zeros(self.w.size)
        self.v = np.zeros(self.w.size)
        self.support = np.zeros(self.w.size, bool)
        self.t = 0
        self.mask = None

    def step(self, grad, new_mask) -> None:
        """``new_mask`` is read on refresh steps only (t = 1, T+1, ...)."""
        self.t += 1
        t = self.t
        if t == 1 or (t - 1) % self.T == 0:
            self.mask = np.zeros(self.w.size, bool)
            self.mask[np.asarray(new_mask)] = True
        g = (np.asarray(grad, np.float64) + self.wd * self.w).reshape(-1) * self.mask
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        u = self.support | self.mask
        bc1, bc2 = 1 - self.b1**t, 1 - self.b2**t
        step = np.zeros(self.w.size)
        step[u] = (self.lr / bc1) * self.m[u] / (np.sqrt(self.v[u] / bc2) + self.eps)
        self.w = self.w - step.reshape(self.w.shape)
        score = np.where(u, np.abs(self.m), -np.inf)
        order = np.lexsort((np.arange(self.w.size), -score))  # by -score, then flat index
        self.support = np.zeros(self.w.size, bool)
        self.support[order[: self.k]] = True
        self.m = self.m * self.support
        self.v = self.v * self.support
