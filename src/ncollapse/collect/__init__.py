"""Neural collapse of any ``torch.nn.Module``: features through forward hooks, one or many layers.

The user names the layers whose input or output are the features (by name, glob pattern or
module; by default the classifier's input) and the classifier whose ``weight`` (C, d) and
``bias`` (C,) are W and b (by default the ``nn.Linear`` whose output is the model's output,
found on the first batch). Collection runs under ``torch.no_grad`` in eval mode; afterwards
every submodule's train/eval flag is restored and every hook removed, also on errors.

Modules: ``modules`` (finding layers and the classifier), ``batches`` (splitting batches,
pooling), ``tap`` (the hooks), ``features`` (:func:`collect_features`), ``measure``
(:func:`measure_model`, :func:`training_means`).
"""

from ncollapse.collect.batches import POOLS
from ncollapse.collect.features import CollectedFeatures, collect_features
from ncollapse.collect.measure import DEFAULT_CACHE_BYTES, measure_model, training_means
from ncollapse.collect.modules import select_layers

__all__ = ["DEFAULT_CACHE_BYTES", "POOLS", "CollectedFeatures", "collect_features",
           "measure_model", "select_layers", "training_means"]
