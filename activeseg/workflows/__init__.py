"""What a user runs against a project, composed from ``core``, ``data``, ``pool`` and
``labelstudio``: import volumes, fit a model, predict a volume, evaluate, score the pool, push
to and ingest from annotators, run a round, simulate, read the history.

Rules: a workflow takes a ``project.Project`` and returns typed records; it prints nothing
(progress goes through callbacks) and never imports ``cli``.
"""
