"""A thin client over ``label_studio_sdk.LabelStudio``: the calls the annotation loop makes.

Connection details come either both from the environment (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``) or both from one ``.env`` file (the project root's, else the current
directory's; never one found in a parent folder), never one from each. The API key is never
logged, shown in a repr or put into an error message, and URLs in messages lose any
``user:password@``.

Every SDK or HTTP failure becomes a one-line :class:`LabelStudioError` naming the call, the
URL, the HTTP method and path and the start of the server's reason. Only idempotent requests
(GET, HEAD, OPTIONS, PUT, DELETE) are retried, with exponential backoff for about 30 s (long
enough to ride out a server restart); a POST, which may create tasks, is sent exactly once.
Label Studio accepts some bad input silently (a prediction whose region does not fit the
labeling config is dropped with ``created=0``), so the bulk calls check counts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from activeseg.errors import AnnotationError, LabelStudioError
from activeseg.labelstudio.envfile import default_env_file, read_env_file, strip_credentials

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
# Requests that may be sent again without changing the outcome, and answers worth a retry
# (a restarting server or its proxy); retries back off from FIRST_RETRY_DELAY up to
# MAX_RETRY_DELAY seconds, for RETRY_FOR seconds in all.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)
RETRY_FOR = 30.0
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
ERROR_TEXT_LENGTH = 200

Json = dict[str, Any]


def connection_settings(env_file: str | Path | None = None) -> tuple[str, str]:
    """Return (url, api_key), both from the environment or both from a ``.env`` file.

    ``env_file``: the ``.env`` to read (pass the project root's); None reads ``./.env`` of
    the current directory only. No parent folder is searched. Raises ConfigError for a
    ``.env`` that is not the user's own or is group/other-writable, and LabelStudioError
    when a setting is missing or the two would come from different places.
    """
    url, key = os.environ.get(URL_ENV, ""), os.environ.get(API_KEY_ENV, "")
    if not (url and key):
        path = Path(env_file) if env_file is not None else default_env_file()
        from_file = read_env_file(path)
        if url or key:
            raise mixed_sources_error(bool(url), path, from_file)
        url, key = from_file.get(URL_ENV, ""), from_file.get(API_KEY_ENV, "")
        missing = [name for name, value in ((URL_ENV, url), (API_KEY_ENV, key)) if not value]
        if missing:
            raise LabelStudioError(
                f"{' and '.join(missing)} not set: export both {URL_ENV} and {API_KEY_ENV} or "
                f"put both in {path} (e.g. {URL_ENV}=http://127.0.0.1:8080; start a server "
                f"with `activeseg labelstudio serve`)"
            )
    return url.rstrip("/"), key


def mixed_sources_error(
    url_in_env: bool, path: Path, from_file: Mapping[str, str]
) -> LabelStudioError:
    """Return the error for only one of URL and key set in the environment (no key shown)."""
    present, absent = (URL_ENV, API_KEY_ENV) if url_in_env else (API_KEY_ENV, URL_ENV)
    where = f"is set in {path}" if from_file.get(absent) else "is not set anywhere"
    return LabelStudioError(
        f"{present} comes from the environment but {absent} {where}: the URL and the key must "
        f"come from the same place; export both or unset {present} and put both in {path}"
    )


def short_text(body: Any, limit: int = ERROR_TEXT_LENGTH) -> str:
    """Return an error body as one line of at most about ``limit`` characters (HTML stripped)."""
    if isinstance(body, dict):
        body = body.get("detail", body)
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    if re.search(r"<(html|body|head|title|!doctype)\b", text, re.IGNORECASE):
        text = re.sub(r"<(script|style)\b.*?</\1\s*>", " ", text, flags=re.IGNORECASE | re.S)
        text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def checked_id(value: Any, what: str) -> int:
    """Return a task or annotation id from Label Studio as an int, before any use in a path.

    Raises AnnotationError (a per-task error) unless it is a non-negative integer (an int,
    or a string of decimal digits).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise AnnotationError(f"{what}: id {shown} from Label Studio is not a non-negative integer")


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
    times = []
    for task in tasks:
        try:
            times.append(parse_time(str(task["updated_at"])))
        except (KeyError, ValueError):
            continue  # reported with its task by the caller
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


# The Data Manager view every project gets: most informative crops first, no image columns.
DEFAULT_VIEW_TITLE = "activeseg: by priority"
# Built-in columns that only clutter an annotator's queue.
CLUTTER_COLUMNS = (
    "annotations_results",
    "annotations_ids",
    "predictions_results",
    "predictions_model_versions",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "avg_lead_time",
    "draft_exists",
)


def default_view_data(hidden_data: Sequence[str]) -> Json:
    """Return the ``data`` of the default Data Manager view (for ``POST /api/dm/views/``).

    Sorted by prediction score, highest first, with the score column shown; the task data
    keys ``hidden_data`` (images, long text) and clutter columns hidden in both the table
    and the labeling stream.
    """
    hidden = [f"tasks:data.{key}" for key in hidden_data]
    hidden += [f"tasks:{column}" for column in CLUTTER_COLUMNS]
    return {
        "title": DEFAULT_VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "ordering": ["-tasks:predictions_score"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
        "filters": {"conjunction": "and", "items": []},
    }


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RetryTransport(httpx.BaseTransport):
    """An HTTP transport that retries idempotent requests while the server is away.

    GET, HEAD, OPTIONS, PUT and DELETE are sent again after a connection failure or a 502,
    503 or 504 answer, with exponential backoff, for ``retry_for`` seconds in all; any other
    method (POST may create tasks) is sent exactly once.
    """

    def __init__(self, inner: httpx.BaseTransport, retry_for: float = RETRY_FOR) -> None:
        self.inner = inner
        self.retry_for = retry_for

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Return the answer to ``request``, after retries when it is idempotent."""
        if request.method not in IDEMPOTENT_METHODS:
            return self.inner.handle_request(request)
        deadline = time.monotonic() + self.retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                response = self.inner.handle_request(request)
            except RETRY_ERRORS as exc:
                if not self.pause(request, type(exc).__name__, deadline, delay):
                    raise
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                if not self.pause(request, str(response.status_code), deadline, delay):
                    return response
                response.close()
            delay = min(2 * delay, MAX_RETRY_DELAY)

    @staticmethod
    def pause(request: httpx.Request, why: str, deadline: float, delay: float) -> bool:
        """Return whether to try again, after sleeping up to ``delay`` (False: time is up)."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        wait = min(delay, left)
        log.info("%s %s: %s; retrying in %.1f s", request.method, request.url.path, why, wait)
        time.sleep(wait)
        return True

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()


class LabelStudioClient:
    """The Label Studio calls of the annotation loop, on top of the SDK."""

    def __init__(
        self, url: str, api_key: str, timeout: float = 60.0, retry_for: float = RETRY_FOR
    ) -> None:
        """Connect to ``url``; ``timeout``: seconds per request; ``retry_for``: RetryTransport's."""
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self._failed: httpx.Request | None = None
        # One HTTP client for the SDK and the raw calls; the SDK's own retries (which would
        # send a POST again) are off: RetryTransport retries the idempotent requests only.
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            follow_redirects=True,
            transport=RetryTransport(httpx.HTTPTransport(), retry_for),
            event_hooks={"response": [self.note_failure]},
        )
        self._sdk = LabelStudio(
            base_url=self.url,
            api_key=api_key,
            timeout=timeout,
            max_retries=0,
            httpx_client=self._http,
        )

    @property
    def shown_url(self) -> str:
        """Return the server URL as messages show it (without ``user:password@``)."""
        return strip_credentials(self.url)

    def note_failure(self, response: httpx.Response) -> None:
        """Remember the request of an error answer (the SDK's errors do not name it)."""
        if response.status_code >= 400:
            self._failed = response.request

    @classmethod
    def from_env(cls, env_file: str | Path | None = None) -> LabelStudioClient:
        """Return a client for ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` (or ``.env``).

        ``env_file``: the project root's ``.env``; None: ``./.env`` (see connection_settings).
        """
        url, key = connection_settings(env_file)
        return cls(url, key)

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.shown_url!r})"

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

        self._failed = None
        try:
            yield
        except ApiError as exc:
            raise self.api_error(what, exc.status_code, exc.body, self._failed) from None
        except httpx.HTTPStatusError as exc:
            raise self.api_error(
                what, exc.response.status_code, exc.response.text, exc.request
            ) from None
        except httpx.HTTPError as exc:
            reason = strip_credentials(short_text(f"{type(exc).__name__}: {exc}"))
            raise LabelStudioError(
                f"{what}: Label Studio at {self.shown_url} is unreachable ({reason})"
            ) from None

    def api_error(
        self, what: str, status: int | None, body: Any, request: httpx.Request | None = None
    ) -> LabelStudioError:
        """Return the one-line LabelStudioError for an HTTP error answer (never the key)."""
        call = "" if request is None else f" to {request.method} {request.url.path}"
        if status == 401:
            return LabelStudioError(
                f"{what}: Label Studio at {self.shown_url} refused the API key in "
                f"{API_KEY_ENV} (401{call})"
            )
        detail = strip_credentials(short_text(body))
        return LabelStudioError(
            f"{what}: Label Studio at {self.shown_url} answered {status}{call}: {detail}"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Return the answer of a raw API call (for routes the SDK lacks), raising on errors."""
        # The SDK's own headers: "Token <key>", or "Bearer <access>" refreshed from a PAT.
        headers = self._sdk._client_wrapper.get_headers()
        kwargs.setdefault("follow_redirects", False)
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

    def ensure_default_view(self, project_id: int, hidden_data: Sequence[str]) -> int:
        """Return the id of the project's default Data Manager view, created if missing.

        See :func:`default_view_data`; a view of that title the annotators changed is kept.
        """
        with self.calling(f"listing the Data Manager views of project {project_id}"):
            views = self.request("GET", "/api/dm/views/", params={"project": project_id}).json()
        for view in views:
            if (view.get("data") or {}).get("title") == DEFAULT_VIEW_TITLE:
                return checked_id(view.get("id"), "a Data Manager view")
        body = {"project": project_id, "data": default_view_data(hidden_data)}
        with self.calling(f"creating the default Data Manager view of project {project_id}"):
            created = self.request("POST", "/api/dm/views/", json=body).json()
        log.info("created the Data Manager view %r of project %d", DEFAULT_VIEW_TITLE, project_id)
        return checked_id(created.get("id"), "the new Data Manager view")

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

    def task_ids(self, project_id: int) -> set[int] | None:
        """Return the ids of a project's tasks; None when the server has no such project."""
        from label_studio_sdk.core.api_error import ApiError

        with self.calling(f"finding project {project_id}"):
            try:
                self._sdk.projects.get(id=project_id)
            except ApiError as exc:
                if exc.status_code == HTTPStatus.NOT_FOUND:
                    return None
                raise
        tasks = self.list_task_data(project_id)
        return {checked_id(t["id"], f"a task of project {project_id}") for t in tasks}

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
