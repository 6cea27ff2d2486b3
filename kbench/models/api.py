"""kbench's public model API: all a zoo entry, in kbench or outside it, needs to import.

An entry subclasses ``VLPreTrainedModel`` (or the single-stream base), registers itself with
``@register_model("name")`` in its own file, builds its pre-training batches with a collator, and sees the trial
through a ``PretrainingContext``. Entries outside kbench load with ``--model package.module:Class`` or from the
``kbench.models`` entry-point group.
"""

from kbench.core.errors import KbenchError
from kbench.features.codebook import Codebook
from kbench.models.base import Collator, VLPreTrainedModel, VLPreTrainingOutput
from kbench.models.context import PretrainingContext, TaskContext
from kbench.models.losses import adaptive_weights, feature_kl
from kbench.models.masking import apply_token_mask, choose_tokens, mask_pairs
from kbench.models.single_stream import SingleStreamForPreTraining, SingleStreamModel
from kbench.models.zoo import register_model

__all__ = [
    "Codebook",
    "Collator",
    "KbenchError",
    "PretrainingContext",
    "SingleStreamForPreTraining",
    "SingleStreamModel",
    "TaskContext",
    "VLPreTrainedModel",
    "VLPreTrainingOutput",
    "adaptive_weights",
    "apply_token_mask",
    "choose_tokens",
    "feature_kl",
    "mask_pairs",
    "register_model",
]
