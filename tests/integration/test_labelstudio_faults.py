"""Label Studio faults against the real server, through a small fault proxy on 127.0.0.1:
5xx answers before and after the server acted, dropped connections and slow answers. No
duplicate tasks, no lost annotations, short errors."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from activeseg.errors import LabelStudioError
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.pool import settings as pool_settings
from activeseg.workflows.annotators import answer_in_labelstudio
from activeseg.workflows.ingest import ingest_annotations
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.push import PROJECT_SETTING, latest_round, push_selected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Fault:
    """What to do to the next request matching ``method`` and ``path`` (a substring)."""

    method: str
    path: str
    kind: str  # "502-before", "502-after", "drop", "slow"
    times: int = 1


@dataclass
class Plan:
    faults: list[Fault] = field(default_factory=list)
    forwarded: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path in path:
                    fault.times -= 1
                    return fault.kind
        return None


def _handler(upstream: str, plan: Plan) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = plan.take(self.command, self.path)
            if fault == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "502-before":
                return self._answer(502, b"<html>" + b"x" * 48_000 + b"</html>")
            if fault == "slow":
                time.sleep(2.0)
            status, headers, payload = self._forward(body)
            if fault == "502-after":
                return self._answer(502, b"<html>bad gateway</html>")
            self._answer(status, payload, headers)

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            skip = {"host", "content-length", "connection", "accept-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
            plan.forwarded.append((self.command, self.path))
            keep = [
                (k, v)
                for k, v in answer.getheaders()
                if k.lower() not in {"transfer-encoding", "connection", "content-length"}
            ]
            connection.close()
            return answer.status, keep, payload

        def _answer(
            self, status: int, payload: bytes, headers: list[tuple[str, str]] | None = None
        ) -> None:
            self.send_response(status)
            for key, value in headers or [("Content-Type", "text/html")]:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    return Proxy


@pytest.fixture
def proxy(ls_connection: Any) -> Iterator[tuple[LabelStudioClient, Plan]]:
    plan = Plan()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ls_connection.url, plan))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = LabelStudioClient(
        f"http://127.0.0.1:{server.server_address[1]}",
        ls_connection.api_key,
        timeout=30.0,
        retry_for=20.0,
    )
    try:
        yield client, plan
    finally:
        client.close()
        server.shutdown()


@pytest.fixture
def selected(
    environment: None, tmp_path: Path, labelstudio_project: Callable[..., Project]
) -> Project:
    project = labelstudio_project(tmp_path / "project")
    run_round(project, until="select")
    return project


def _round_tasks(ls_client: LabelStudioClient, project: Project) -> list[int]:
    with project.session() as session:
        ls_project = int(pool_settings.get_setting(session, PROJECT_SETTING) or 0)
    return sorted(t["data"]["crop_id"] for t in ls_client.list_task_data(ls_project))


@pytest.mark.parametrize("kind", ["502-before", "502-after", "drop"])
def test_a_failed_import_leaves_no_duplicate_tasks_after_the_retry(
    selected: Project,
    proxy: tuple[LabelStudioClient, Plan],
    ls_client: LabelStudioClient,
    kind: str,
) -> None:
    client, plan = proxy
    plan.faults.append(Fault("POST", "/import", kind))
    with pytest.raises(LabelStudioError) as failed:
        push_selected(selected, latest_round(selected), client=client)
    assert len(str(failed.value)) < 500  # the 48 KB page is cut to a line
    imports = [p for m, p in plan.forwarded if m == "POST" and "/import" in p]
    assert len(imports) == (1 if kind == "502-after" else 0)  # a POST is never sent twice
    result = push_selected(selected, latest_round(selected), client=client)
    crops = _round_tasks(ls_client, selected)
    assert len(crops) == len(set(crops)) == result.pushed
    assert result.recovered == (result.pushed if kind == "502-after" else 0)


def test_ingest_rides_out_5xx_drops_and_slow_answers(
    selected: Project, proxy: tuple[LabelStudioClient, Plan], ls_client: LabelStudioClient
) -> None:
    client, plan = proxy
    push_selected(selected, latest_round(selected), client=client)
    assert answer_in_labelstudio(selected, ls_client) == len(_round_tasks(ls_client, selected))
    plan.faults += [Fault("GET", "/api/tasks", "502-before", 2), Fault("GET", "/api/tasks", "drop"),
                    Fault("GET", "/api/tasks", "slow")]  # fmt: skip
    result = ingest_annotations(selected, client=client)
    assert result.ingested == len(_round_tasks(ls_client, selected)) and not result.errors
    again = ingest_annotations(selected, client=client)
    assert again.ingested == again.updated == 0  # nothing lost, nothing twice
