"""A real Label Studio server for the integration tests, shared by the whole session.

With ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` set (CI starts one server) the tests use
that server; otherwise they start their own from ``.venv-ls`` on a free port, with a temporary
data directory and a freshly generated token, and stop it at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activeseg.labelstudio.client import API_KEY_ENV, URL_ENV, LabelStudioClient
from activeseg.labelstudio.server import RunningServer, start_server


@dataclass(frozen=True)
class Connection:
    """Where the test server is; the key stays out of reprs so it never shows in test output."""

    url: str
    api_key: str
    server: RunningServer | None

    def __repr__(self) -> str:
        return f"Connection(url={self.url!r})"


@pytest.fixture(scope="session")
def ls_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connection]:
    """Yield the URL and key of a running Label Studio server (external or started here)."""
    url, key = os.environ.get(URL_ENV), os.environ.get(API_KEY_ENV)
    if url and key:
        yield Connection(url.rstrip("/"), key, None)
        return
    key = secrets.token_hex(20)
    server = start_server(data_dir=tmp_path_factory.mktemp("label-studio"), api_key=key)
    try:
        yield Connection(server.url, key, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(ls_connection: Connection) -> Iterator[LabelStudioClient]:
    """Yield a client of the session's server."""
    client = LabelStudioClient(ls_connection.url, ls_connection.api_key)
    yield client
    client.close()


@pytest.fixture
def server_log(ls_connection: Connection) -> Path | None:
    """Return the log of the server the tests started (None for an external one)."""
    return ls_connection.server.log_path if ls_connection.server else None
