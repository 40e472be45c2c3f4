"""A thin client over ``label_studio_sdk.LabelStudio``: the calls the annotation loop makes.

Connection details come from the environment (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``),
or from a ``.env`` file found upward from the working directory; variables already set win.
The API key is never logged, shown in a repr or put into an error message.

Every SDK or HTTP failure becomes a :class:`LabelStudioError` naming the call, the URL and the
server's reason. Label Studio accepts some bad input silently (a prediction whose region does
not fit the labeling config is dropped with ``created=0``), so the bulk calls check counts.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from dotenv import dotenv_values, find_dotenv

from activeseg.errors import LabelStudioError

if TYPE_CHECKING:
    # The SDK takes about a second to import: it loads when a client is made, not before.
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
# Django's DATA_UPLOAD_MAX_NUMBER_FILES on the server (default 100): files per request.
FILES_PER_REQUEST = 100
TASKS_PAGE_SIZE = 100
UPLOAD_NAME = re.compile(r"[A-Za-z0-9_.]+\.(png|jpg|jpeg)")
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Json = dict[str, Any]


def connection_settings(env_file: str | Path | None = None) -> tuple[str, str]:
    """Return (url, api_key) from the environment, else from a ``.env`` file; error if unset.

    ``env_file``: the ``.env`` to read; None searches upward from the working directory.
    """
    path = str(env_file) if env_file is not None else find_dotenv(usecwd=True)
    from_file = dotenv_values(path) if path else {}
    url = os.environ.get(URL_ENV) or from_file.get(URL_ENV) or ""
    key = os.environ.get(API_KEY_ENV) or from_file.get(API_KEY_ENV) or ""
    missing = [name for name, value in ((URL_ENV, url), (API_KEY_ENV, key)) if not value]
    if missing:
        raise LabelStudioError(
            f"{' and '.join(missing)} not set: export them or put them in a .env file "
            f"(e.g. {URL_ENV}=http://127.0.0.1:8080; start a server with "
            f"`activeseg labelstudio serve`)"
        )
    return url.rstrip("/"), key


def iso_utc(moment: datetime) -> str:
    """Return a timezone-aware datetime as the UTC string Label Studio's filters parse."""
    if moment.tzinfo is None:
        raise ValueError(f"need a timezone-aware datetime, got naive {moment}")
    return moment.astimezone(UTC).strftime(DATETIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Return the aware datetime of a timestamp as Label Studio writes it (ISO 8601)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def latest_update(tasks: Iterable[Mapping[str, Any]]) -> datetime | None:
    """Return the latest ``updated_at`` of tasks (the next ``since`` of changed_tasks), or None."""
    times = [parse_time(str(task["updated_at"])) for task in tasks if task.get("updated_at")]
    return max(times) if times else None


def deleted_annotations(task: Mapping[str, Any], known_ids: Iterable[int]) -> set[int]:
    """Return the ids in ``known_ids`` (ingested before) that the task no longer has."""
    current = {int(annotation["id"]) for annotation in task.get("annotations", [])}
    return set(known_ids) - current


def updated_tasks_query(since: datetime | None) -> str:
    """Return the Data Manager query for tasks updated strictly after ``since`` (None: all)."""
    items = []
    if since is not None:
        items.append(
            {
                "filter": "filter:tasks:updated_at",
                "operator": "greater",
                "type": "Datetime",
                "value": iso_utc(since),
            }
        )
    return json.dumps({"filters": {"conjunction": "and", "items": items}})


def stored_name(path: str) -> str:
    """Return the name a file was uploaded as, from its path ``upload/<project>/<uuid8>-<name>``."""
    return path.rsplit("/", 1)[-1].split("-", 1)[-1]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LabelStudioClient:
    """The Label Studio calls of the annotation loop, on top of the SDK."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self._sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def from_env(cls, env_file: str | Path | None = None) -> LabelStudioClient:
        """Return a client for ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` (or ``.env``)."""
        url, key = connection_settings(env_file)
        return cls(url, key)

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    @property
    def sdk(self) -> LabelStudio:
        """Return the underlying SDK client (for calls this wrapper does not cover)."""
        return self._sdk

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn SDK and HTTP failures inside the block into LabelStudioError naming ``what``."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except ApiError as exc:
            raise self.api_error(what, exc.status_code, exc.body) from None
        except httpx.HTTPStatusError as exc:
            raise self.api_error(what, exc.response.status_code, exc.response.text) from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(
                f"{what}: Label Studio at {self.url} is unreachable ({type(exc).__name__}: {exc})"
            ) from None

    def api_error(self, what: str, status: int | None, body: Any) -> LabelStudioError:
        """Return the LabelStudioError for an HTTP error answer (the key is never included)."""
        if status == 401:
            return LabelStudioError(
                f"{what}: Label Studio at {self.url} refused the API key in {API_KEY_ENV} (401)"
            )
        detail = body.get("detail", body) if isinstance(body, dict) else body
        return LabelStudioError(f"{what}: Label Studio at {self.url} answered {status}: {detail}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Return the answer of a raw API call (for routes the SDK lacks), raising on errors."""
        # The SDK's own headers: "Token <key>", or "Bearer <access>" refreshed from a PAT.
        headers = self._sdk._client_wrapper.get_headers()
        response = self._http.request(method, path, headers=headers, **kwargs)
        response.raise_for_status()
        return response

    def check(self) -> None:
        """Raise LabelStudioError unless the server answers and accepts the API key."""
        with self.calling("checking the connection"):
            self._sdk.users.whoami()

    def ensure_project(self, title: str, label_config: str, project_id: int | None = None) -> int:
        """Return the id of a project with this labeling config: the given one, else by title.

        An existing project whose config differs gets the new one (Label Studio refuses if
        that would orphan existing labels); without a match a project is created.
        """
        with self.calling(f"finding project {project_id or title!r}"):
            if project_id is None:
                listed: Iterable[Any] = self._sdk.projects.list(title=title)
                found = [p for p in listed if p.title == title]
                project = min(found, key=lambda p: p.id or 0) if found else None
            else:
                project = self._sdk.projects.get(id=project_id)
        if project is None or project.id is None:
            return self.create_project(title, label_config)
        if (project.label_config or "").strip() != label_config.strip():
            with self.calling(f"updating the labeling config of project {project.id}"):
                self._sdk.projects.update(id=project.id, label_config=label_config)
            log.info("updated the labeling config of project %d", project.id)
        return int(project.id)

    def create_project(self, title: str, label_config: str) -> int:
        """Return the id of a new project."""
        with self.calling(f"creating project {title!r}"):
            project = self._sdk.projects.create(title=title, label_config=label_config)
        log.info("created Label Studio project %d %r", project.id, title)
        return int(project.id or 0)

    def upload_images(self, project_id: int, images: Mapping[str, bytes]) -> dict[str, str]:
        """Return {name: task URL} after uploading images (PNG/JPEG bytes) to a project.

        Names must be unique plain file names (letters, digits, ``_``, ``.``; ending in
        .png/.jpg/.jpeg). Files go up 100 per request (the server's default limit) without
        creating tasks; each batch's stored paths come back in one more request.
        """
        for name in images:
            if not UPLOAD_NAME.fullmatch(name):
                raise ValueError(f"upload name {name!r} must match {UPLOAD_NAME.pattern}")
        urls: dict[str, str] = {}
        for batch in chunks(list(images), FILES_PER_REQUEST):
            urls.update(self.upload_batch(project_id, {name: images[name] for name in batch}))
        log.debug("uploaded %d images to project %d", len(urls), project_id)
        return urls

    def upload_batch(self, project_id: int, images: Mapping[str, bytes]) -> dict[str, str]:
        """Return {name: task URL} for up to 100 images uploaded in one request."""
        # Several files under one field name keep only the last: fields file0, file1, ...
        files = {f"file{i}": (name, data) for i, (name, data) in enumerate(images.items())}
        what = f"uploading {len(files)} images to project {project_id}"
        with self.calling(what):
            answer = self.request(
                "POST",
                f"/api/projects/{project_id}/import",
                params={"commit_to_project": "false"},
                files=files,
            ).json()
            ids = answer.get("file_upload_ids") or []
            stored = self.request(
                "GET", f"/api/projects/{project_id}/file-uploads", params={"ids": json.dumps(ids)}
            ).json()
        urls = {stored_name(item["file"]): f"/data/{item['file']}" for item in stored}
        if set(urls) != set(images):
            missing = sorted(set(images) - set(urls))
            raise LabelStudioError(f"{what}: the server did not store {missing[:5]}")
        return urls

    def fetch(self, url: str) -> bytes:
        """Return the bytes behind a task URL such as ``/data/upload/...`` (needs the key)."""
        with self.calling(f"fetching {url}"):
            return self.request("GET", url).content

    def import_tasks(self, project_id: int, tasks: Sequence[Json]) -> list[int]:
        """Return the ids of new tasks (``{"data": ..., ...}`` or bare data dicts), in order."""
        what = f"importing {len(tasks)} tasks into project {project_id}"
        with self.calling(what):
            answer = self._sdk.projects.import_tasks(
                id=project_id, request=cast(Any, list(tasks)), return_task_ids=True
            )
        # task_ids is not a declared field of the SDK's answer model, but the server sends it.
        ids = [int(i) for i in getattr(answer, "task_ids", None) or []]
        if len(ids) != len(tasks):
            raise LabelStudioError(f"{what}: the server created {len(ids)}")
        return ids

    def import_predictions(self, project_id: int, predictions: Sequence[Json]) -> int:
        """Return how many predictions (``{"task", "result", "score", "model_version"}``) were made.

        Raises LabelStudioError when the server silently drops some (a region whose label or
        ``item_index`` does not fit the project's labeling config).
        """
        what = f"importing {len(predictions)} predictions into project {project_id}"
        with self.calling(what):
            answer = self._sdk.projects.import_predictions(
                id=project_id, request=cast(Any, list(predictions))
            )
        created = int(answer.created or 0)
        if created != len(predictions):
            raise LabelStudioError(
                f"{what}: the server kept only {created}; check label values and item_index "
                f"against the labeling config"
            )
        return created

    def changed_tasks(self, project_id: int, since: datetime | None = None) -> list[Json]:
        """Return the tasks updated after ``since`` (all when None), with ALL their annotations.

        Each task is a JSON-like dict (``id``, ``data``, ``updated_at``, ``annotations``, ...).
        ``annotations`` includes skips (``was_cancelled: true``), which
        ``annotations.list`` leaves out. A deleted annotation is simply absent: compare with
        :func:`deleted_annotations`. Pass as ``since`` the server's own time, e.g.
        :func:`latest_update` of the previous answer, not this machine's clock.
        """
        with self.calling(f"listing changed tasks of project {project_id}"):
            pager: Iterable[Any] = self._sdk.tasks.list(
                project=project_id,
                query=updated_tasks_query(since),
                fields="all",
                page_size=TASKS_PAGE_SIZE,
            )
            return [task.model_dump(mode="json") for task in pager]

    def list_task_data(self, project_id: int) -> list[Json]:
        """Return ``{"id", "data"}`` of every task of a project (no annotations, no URL rewrite)."""
        with self.calling(f"listing the tasks of project {project_id}"):
            pager: Iterable[Any] = self._sdk.tasks.list(
                project=project_id,
                fields="task_only",
                resolve_uri=False,
                page_size=TASKS_PAGE_SIZE,
            )
            return [{"id": task.id, "data": task.data} for task in pager]

    def get_task(self, task_id: int) -> Json:
        """Return one task as a JSON-like dict, with its annotations (skips included)."""
        with self.calling(f"reading task {task_id}"):
            return self._sdk.tasks.get(str(task_id)).model_dump(mode="json")

    def create_annotation(
        self, task_id: int, result: Sequence[Json], was_cancelled: bool = False
    ) -> int:
        """Return the id of a new annotation of a task (``was_cancelled=True``: a skip)."""
        with self.calling(f"annotating task {task_id}"):
            annotation = self._sdk.annotations.create(
                id=task_id, result=list(result), was_cancelled=was_cancelled
            )
        return int(annotation.id or 0)

    def update_annotation(
        self, annotation_id: int, result: Sequence[Json], was_cancelled: bool | None = None
    ) -> None:
        """Replace an annotation's result (and, if given, its skip flag)."""
        extra = {} if was_cancelled is None else {"was_cancelled": was_cancelled}
        with self.calling(f"updating annotation {annotation_id}"):
            self._sdk.annotations.update(id=annotation_id, result=list(result), **extra)

    def delete_annotation(self, annotation_id: int) -> None:
        """Delete an annotation."""
        with self.calling(f"deleting annotation {annotation_id}"):
            self._sdk.annotations.delete(id=annotation_id)
