"""Arrays on disk: zarr volumes with OME-Zarr metadata, crop labels, importers of FISBe, zarr,
TIFF and HDF5 files, and the synthetic MCFO-like generator.

Rules: imports ``core`` (for instance arrays) and nothing above it; no ledger, no server.
"""
