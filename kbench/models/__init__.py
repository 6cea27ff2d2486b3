"""The model zoo: the plug-in API every entry implements, the registry, shared model parts, training loops.

Importing this package registers the zoo's model types (``kbench-<name>``) with transformers' ``AutoConfig``,
``AutoModel`` and ``AutoModelForPreTraining``, so ``import kbench.models`` comes before ``from_pretrained``.
"""

from kbench.models.auto import register_auto_classes

register_auto_classes()
