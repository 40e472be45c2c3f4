"""The only code that talks to Label Studio: the API client, the local server, the labeling
config, brush RLE conversion and the task images.

Rules: knows nothing of projects, rounds or the ledger; the workflows that push and ingest
tasks (``workflows.push``, ``workflows.ingest``) use it.
"""
