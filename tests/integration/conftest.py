"""A real Label Studio server for the integration tests, shared by the whole session.

With ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` set (CI starts one server) the tests use
that server; otherwise they start their own from ``.venv-ls`` on a free port, with a temporary
data directory and a freshly generated token, and stop it at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activeseg.labelstudio.client import API_KEY_ENV, URL_ENV, LabelStudioClient
from activeseg.labelstudio.server import RunningServer, start_server
from activeseg.workflows.project import CONFIG_FILE, Project, open_project
from activeseg.workflows.simulate import create_demo_project


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


@pytest.fixture(scope="module")
def environment(ls_connection: Connection) -> Iterator[None]:
    """Point the library at the test server through the environment, as users do."""
    saved = {name: os.environ.get(name) for name in (URL_ENV, API_KEY_ENV)}
    os.environ[URL_ENV], os.environ[API_KEY_ENV] = ls_connection.url, ls_connection.api_key
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# Enough updates of the smoke model to learn something from two sparsely labeled crops (80
# were too few once the instance-mask loss was on: avF1 0.044; 120 give 0.18).
LEARNING_STEPS = 120


def _labelstudio_project(root: Path, images: str = "inline") -> Project:
    """Return a synthetic smoke project whose annotators work in Label Studio."""
    project = create_demo_project(root, "smoke")
    config = project.config
    config = config.model_copy(
        update={
            "loop": config.loop.model_copy(update={"annotator": "labelstudio"}),
            "labelstudio": config.labelstudio.model_copy(update={"images": images}),
            "train": config.train.model_copy(update={"steps": LEARNING_STEPS}),
        }
    )
    (root / CONFIG_FILE).write_text(config.to_yaml())
    project.engine.dispose()
    return open_project(root)


@pytest.fixture(scope="session")
def labelstudio_project() -> Callable[..., Project]:
    """Return a maker of synthetic smoke projects whose annotators work in Label Studio."""
    return _labelstudio_project
