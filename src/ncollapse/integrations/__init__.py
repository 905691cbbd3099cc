"""Neural-collapse tracking inside other training stacks (docs/integrations.md).

- :mod:`ncollapse.integrations.lightning`: ``NeuralCollapse``, a Lightning ``Callback``
  (``pip install 'ncollapse[lightning]'``);
- :mod:`ncollapse.integrations.transformers`: ``NeuralCollapseCallback`` for the Hugging Face
  ``Trainer`` (``pip install 'ncollapse[transformers]'``);
- :mod:`ncollapse.integrations.tensorboard`: ``TensorBoardLogger``, scalars and the overview
  figure in a TensorBoard log directory (``pip install 'ncollapse[tensorboard]'``).

Importing this package imports none of those frameworks; each module imports its own and
says which extra to install when it is missing.
"""
