"""The science, as pure functions on arrays: models, training, tiled prediction, clustering,
uncertainty, acquisition and metrics.

Rules: numpy or torch arrays in, arrays out, shapes and dtypes in the docstrings. Nothing here
opens a project, the ledger or Label Studio; nothing here imports ``data``, ``pool``,
``labelstudio``, ``workflows`` or ``cli``. A checkpoint folder (``models.checkpoint``) is the one
file format this layer reads and writes.
"""
