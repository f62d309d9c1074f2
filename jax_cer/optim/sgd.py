"""SGD as ``torch.optim.SGD`` computes it: coupled L2 weight decay, then optional (Nesterov) momentum.

PyTorch adds ``weight_decay * p`` to the gradient before the momentum buffer (coupled L2, unlike
AdamW's decoupled decay), and its first momentum step stores the gradient itself (optax's
``trace`` starts from zeros and reaches the same buffer). The trainers build every SGD from
:func:`sgd`: the fusion recipe (:func:`sgd_nesterov`, spec ``fusion-models.md`` §5.2) and the text
models' plain SGD.
"""

from __future__ import annotations

import optax


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=...)`` as an optax transformation.

    ``optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum,
    nesterov))``; the decay stays in the chain when it is 0 (its state is empty), so every
    configuration has the same state structure. ``momentum=None``: plain SGD, no momentum buffer.
    ``learning_rate`` may be a schedule of the step count.
    """
    if momentum is not None and momentum < 0:
        raise ValueError(f"momentum must be >= 0 or None, got {momentum}")
    if nesterov and not momentum:
        raise ValueError("nesterov=True needs a momentum > 0")
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    )


def sgd_nesterov(
    learning_rate: optax.ScalarOrSchedule = 1e-3, weight_decay: float = 1e-4
) -> optax.GradientTransformation:
    """The original fusion optimizer (spec §5.2): SGD, Nesterov momentum 0.9, coupled L2 weight decay.

    Reproduces ``torch.optim.SGD(nesterov=True, momentum=0.9, weight_decay=1e-4)`` exactly,
    first step included.
    """
    return sgd(learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay)
