"""activeseg: an active-learning annotation loop for 3-D neuron instance segmentation.

The package is layered; each layer imports only the layers listed before it:

- ``errors``, ``config``, ``resources``: named exceptions, the typed config, shipped files.
- ``core``: the science as pure functions on arrays (models, training, tiled prediction,
  clustering, uncertainty, acquisition, metrics). No files of a project, no ledger, no server.
- ``data``: arrays on disk (zarr volumes with OME-Zarr metadata, importers, FISBe, synthetic).
- ``pool``: the ledger (SQLAlchemy + Alembic); the only code that talks to the database.
- ``labelstudio``: the only code that talks to Label Studio (client, server, brush RLE, views).
- ``workflows``: what a user runs against a project, composed from the layers above.
- ``cli``: the ``activeseg`` command line; nothing imports it.

ARCHITECTURE.md in the repository says where each concept lives.
"""

__version__ = "0.1.0"
