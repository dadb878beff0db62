"""Built-in benchmark workloads and the :class:`Workload` protocol.

``load_workload("deep_mlp", seed=0, depth=24)`` builds a built-in by name;
``load_workload("mypkg.workloads:make", seed=0)`` calls a user's factory
``make(seed=0, device="cpu", **kwargs)``. ``describe_workloads()`` lists the built-ins.

=================  ==========================================================================
name               what it is
=================  ==========================================================================
``rnn_adding``     tanh RNN on the adding problem (sum of two U[0,1]; chance MSE 0.167)
``deep_mlp``       deep plain MLP (no normalisation) regressing a fixed random teacher
``transformer_lm`` char-level causal transformer LM on generated text, post-LN or pre-LN
``cnn_digits``     small CNN on scikit-learn's 8x8 digits (cross-entropy, accuracy)
=================  ==========================================================================
"""

from __future__ import annotations

from stability.workloads.base import (
    PROTOCOL_METHODS,
    BuiltinWorkload,
    Workload,
    WorkloadError,
    WorkloadFactory,
)
from stability.workloads.cnn_digits import cnn_digits
from stability.workloads.deep_mlp import deep_mlp
from stability.workloads.loader import BUILTIN_WORKLOADS, describe_workloads, load_workload
from stability.workloads.rnn_adding import rnn_adding
from stability.workloads.transformer_lm import transformer_lm

__all__ = [
    "BUILTIN_WORKLOADS",
    "PROTOCOL_METHODS",
    "BuiltinWorkload",
    "Workload",
    "WorkloadError",
    "WorkloadFactory",
    "cnn_digits",
    "deep_mlp",
    "describe_workloads",
    "load_workload",
    "rnn_adding",
    "transformer_lm",
]
