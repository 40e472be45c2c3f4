"""The client against a tiny stub HTTP server: which requests are retried, and short errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from activeseg.errors import LabelStudioError
from activeseg.labelstudio import client as client_module
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.server import free_port

KEY = "stub-key-0123456789"
# What a proxy in front of a restarting Label Studio sends: a 48 KB HTML page.
HTML_502 = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title>\n<style>body { color: red }"
    "</style></head>\n<body><h1>Bad Gateway</h1>\n"
    + "<p>The upstream server is restarting, please wait.</p>\n" * 900
    + "</body></html>"
)
Answer = tuple[int, str, str]  # status, body, content type


@dataclass
class Stub:
    """A scripted server: answers per "METHOD /path" (the last one repeats), requests seen."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str) -> Answer:
        queue = self.answers.get(f"{method} {path}", [(404, '{"detail": "no route"}', "json")])
        return queue.pop(0) if len(queue) > 1 else queue[0]


def serve(stub: Stub, port: int = 0) -> ThreadingHTTPServer:
    """Return a running HTTP server on 127.0.0.1 that answers from ``stub``."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            stub.requests.append((self.command, path))
            status, body, kind = stub.answer(self.command, path)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", f"application/{kind}" if kind == "json" else kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub.url = f"http://127.0.0.1:{server.server_port}"
    return server


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()
    server = serve(state)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "FIRST_RETRY_DELAY", 0.02)


def test_a_failed_task_import_is_sent_once_and_reported_in_one_line(stub: Stub) -> None:
    stub.answers["POST /api/projects/3/import"] = [(502, HTML_502, "text/html")]
    client = LabelStudioClient(stub.url, KEY)
    with pytest.raises(LabelStudioError) as caught:
        client.import_tasks(3, [{"data": {"images": []}}])
    client.close()
    # A POST that creates tasks is never sent again: a retry could duplicate tasks.
    assert stub.requests == [("POST", "/api/projects/3/import")]
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500
    assert "answered 502 to POST /api/projects/3/import: 502 Bad Gateway Bad Gateway" in message
    assert "color" not in message
    assert KEY not in message


@pytest.mark.usefixtures("quick_retries")
def test_idempotent_requests_are_retried_until_the_server_answers(stub: Stub) -> None:
    stub.answers["GET /data/upload/1/a.png"] = [
        (503, "starting", "text/plain"),
        (502, HTML_502, "text/html"),
        (200, "png bytes", "image/png"),
    ]
    stub.answers["GET /api/tasks/5/"] = [
        (504, "", "text/plain"),
        (200, '{"id": 5, "data": {}, "annotations": []}', "json"),
    ]
    stub.answers["DELETE /api/annotations/4/"] = [(503, "", "text/plain"), (204, "", "json")]
    client = LabelStudioClient(stub.url, KEY)
    assert client.fetch("/data/upload/1/a.png") == b"png bytes"
    assert client.get_task(5)["id"] == 5
    client.delete_annotation(4)
    client.close()
    # Exactly one retry per failed answer: the SDK's own retries are off.
    assert [r for r, _ in stub.requests] == ["GET"] * 5 + ["DELETE"] * 2


@pytest.mark.usefixtures("quick_retries")
def test_retries_give_up_after_retry_for_with_a_short_error(stub: Stub) -> None:
    stub.answers["GET /api/tasks/5/"] = [(502, HTML_502, "text/html")]
    client = LabelStudioClient(stub.url, KEY, retry_for=0.3)
    start = time.monotonic()
    with pytest.raises(
        LabelStudioError, match=r"reading task 5: .* answered 502 to GET /api/tasks/5/"
    ):
        client.get_task(5)
    assert 0.3 <= time.monotonic() - start < 3
    assert 3 <= len(stub.requests) <= 10


@pytest.mark.usefixtures("quick_retries")
def test_a_get_rides_out_a_server_restart() -> None:
    port = free_port()
    client = LabelStudioClient(f"http://127.0.0.1:{port}", KEY, retry_for=10)
    stub = Stub({"GET /data/upload/x.png": [(200, "back", "image/png")]})
    servers: list[ThreadingHTTPServer] = []
    restart = threading.Timer(0.3, lambda: servers.append(serve(stub, port)))
    restart.start()
    try:
        assert client.fetch("/data/upload/x.png") == b"back"
    finally:
        restart.join()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert stub.requests == [("GET", "/data/upload/x.png")]


def test_a_post_to_a_server_that_is_down_is_not_retried() -> None:
    client = LabelStudioClient(f"http://127.0.0.1:{free_port()}", KEY)
    start = time.monotonic()
    with pytest.raises(LabelStudioError, match=r"importing 1 tasks .* unreachable"):
        client.import_tasks(3, [{"data": {}}])
    assert time.monotonic() - start < 1.0


def test_credentials_in_the_url_never_show(stub: Stub) -> None:
    host = stub.url.removeprefix("http://")
    stub.answers["GET /api/current-user/whoami"] = [(500, '{"detail": "boom"}', "json")]
    client = LabelStudioClient(f"http://admin:hunter2@{host}", KEY, retry_for=0)
    with pytest.raises(LabelStudioError, match=f"at http://{host} answered 500") as caught:
        client.check()
    down = LabelStudioClient(f"http://admin:hunter2@127.0.0.1:{free_port()}", KEY, retry_for=0)
    with pytest.raises(LabelStudioError, match="unreachable") as unreachable:
        down.check()
    for text in (str(caught.value), repr(client), str(unreachable.value)):
        assert "hunter2" not in text and "admin" not in text
