"""Fusion models of the CER and BAH papers in Flax NNX, with strict original-weight import.

Public API (stable)::

    from jax_cer.models import from_original_state_dict, to_original_state_dict
    model = from_original_state_dict("jmt", "best-models/None/model.pt", faithful=True)
    logits = model({"video": v, "vggish": a, "bert": t})          # [B, T, K]
    logits, inter = model(inputs, return_intermediates=True)      # inter["fuse.CA_ajr"], ...
"""

from jax_cer.models.can import CAN
from jax_cer.models.configs import (
    CANConfig,
    FusionConfig,
    IR50Config,
    JMTConfig,
    LFANConfig,
    MTConfig,
    TCNConfig,
    config_for,
)
from jax_cer.models.convert import (
    MODEL_CLASSES,
    StateDictError,
    build_model,
    from_original_state_dict,
    load_state_dict_file,
    to_original_state_dict,
    torch_entries,
)
from jax_cer.models.ir50 import IR50
from jax_cer.models.jmt import JMT
from jax_cer.models.lfan import LFAN, sliding_window_logits
from jax_cer.models.mt import MT
from jax_cer.models.tcn import TCN

__all__ = [
    "CAN",
    "IR50",
    "JMT",
    "LFAN",
    "MODEL_CLASSES",
    "MT",
    "TCN",
    "CANConfig",
    "FusionConfig",
    "IR50Config",
    "JMTConfig",
    "LFANConfig",
    "MTConfig",
    "StateDictError",
    "TCNConfig",
    "build_model",
    "config_for",
    "from_original_state_dict",
    "load_state_dict_file",
    "sliding_window_logits",
    "to_original_state_dict",
    "torch_entries",
]
