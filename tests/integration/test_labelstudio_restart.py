"""The real Label Studio server stopped and restarted mid-push and mid-ingest, and tasks and
projects deleted in it: no duplicate task, no lost annotation, no crop stuck queued."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from activeseg.errors import LabelStudioError
from activeseg.labelstudio.client import API_KEY_ENV, URL_ENV, LabelStudioClient
from activeseg.labelstudio.server import RunningServer, start_server
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.annotators import answer_in_labelstudio
from activeseg.workflows.ingest import ingest_annotations
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.push import PROJECT_SETTING, latest_round, push_selected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Restartable:
    """A Label Studio server of this module's own, which the tests stop and start again."""

    server: RunningServer
    key: str

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = start_server(self.server.port, self.server.data_dir, api_key=self.key)

    def client(self) -> LabelStudioClient:
        # Idempotent calls wait out a restart (~5 s here, a minute on a busy machine).
        return LabelStudioClient(self.server.url, self.key, timeout=60.0, retry_for=240.0)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    key = secrets.token_hex(20)
    server = start_server(data_dir=tmp_path_factory.mktemp("ls-restart"), api_key=key)
    own = Restartable(server, key)
    saved = {name: os.environ.get(name) for name in (URL_ENV, API_KEY_ENV)}
    os.environ[URL_ENV], os.environ[API_KEY_ENV] = server.url, key
    try:
        yield own
    finally:
        own.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def selected(
    own_server: Restartable, tmp_path: Path, labelstudio_project: Callable[..., Project]
) -> Project:
    project = labelstudio_project(tmp_path / "project")
    run_round(project, until="select")
    return project


def _crops_in_labelstudio(client: LabelStudioClient, project: Project) -> list[int]:
    with project.session() as session:
        ls_project = int(pool_settings.get_setting(session, PROJECT_SETTING) or 0)
    return sorted(t["data"]["crop_id"] for t in client.list_task_data(ls_project))


def test_a_server_restarted_mid_push_leaves_no_duplicate_task(
    selected: Project, own_server: Restartable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = own_server.client()
    original = LabelStudioClient.import_tasks

    def stop_first(self: LabelStudioClient, *args: Any) -> Any:
        own_server.stop()  # the images are uploaded; the server goes away before the tasks
        return original(self, *args)

    monkeypatch.setattr(LabelStudioClient, "import_tasks", stop_first)
    with pytest.raises(LabelStudioError, match="unreachable") as failed:
        push_selected(selected, latest_round(selected), client=client)
    assert len(str(failed.value)) < 500
    monkeypatch.setattr(LabelStudioClient, "import_tasks", original)
    own_server.start()
    result = push_selected(selected, latest_round(selected), client=client)
    crops = _crops_in_labelstudio(client, selected)
    assert result.pushed > 0 and len(crops) == len(set(crops)) == result.pushed


def test_an_ingest_rides_out_a_server_restart(selected: Project, own_server: Restartable) -> None:
    client = own_server.client()
    pushed = push_selected(selected, latest_round(selected), client=client).pushed
    assert answer_in_labelstudio(selected, client) == pushed
    own_server.stop()
    outcome: list[Any] = []
    ingest = threading.Thread(
        target=lambda: outcome.append(_attempt(lambda: ingest_annotations(selected, client=client)))
    )
    ingest.start()  # it waits for the server (idempotent reads are retried with backoff)
    # Started from this (long-lived) thread: the server is tied to the thread that starts it.
    own_server.start()
    ingest.join()
    (result,) = outcome
    assert not isinstance(result, Exception), result
    assert (result.ingested, result.errors) == (pushed, [])
    again = ingest_annotations(selected, client=client)
    assert again.ingested == again.updated == 0  # nothing lost, nothing twice


def _attempt(call: Callable[[], Any]) -> Any:
    """Return what ``call`` returns, or the exception it raised."""
    try:
        return call()
    except Exception as exc:
        return exc


def test_deleted_tasks_and_projects_return_their_crops_to_the_pool(
    selected: Project, own_server: Restartable
) -> None:
    client = own_server.client()
    first = push_selected(selected, latest_round(selected), client=client)
    assert first.pushed >= 2
    gone = first.tasks[0]
    client.request("DELETE", f"/api/tasks/{gone}/")
    assert ingest_annotations(selected, client=client).deleted == 1
    with selected.session() as session:
        (task,) = [t for t in pool_tasks.list_tasks(session) if t.ls_task_id == gone]
        assert not task.active
        assert pool_volumes.get_crop(session, task.crop_id).status == "unlabeled"
    client.request("DELETE", f"/api/projects/{first.project_id}/")
    assert ingest_annotations(selected, client=client).deleted == first.pushed - 1
    with selected.session() as session:
        assert pool_volumes.list_crops(session, status="queued") == []
    again = push_selected(selected, latest_round(selected), client=client)
    assert again.project_id != first.project_id and again.pushed == first.pushed
    assert len(_crops_in_labelstudio(client, selected)) == first.pushed
