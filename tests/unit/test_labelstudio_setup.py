"""Label Studio connection and server setup that needs no running server."""

from __future__ import annotations

import io
import socket
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from activeseg.errors import LabelStudioError
from activeseg.labelstudio.client import (
    connection_settings,
    deleted_annotations,
    iso_utc,
    latest_update,
    stored_name,
    updated_tasks_query,
)
from activeseg.labelstudio.server import (
    check_port_free,
    echo_log,
    find_ls_venv,
    free_port,
    server_command,
    server_environment,
    start_server,
    ui_password,
)

KEY = "k" * 20


def test_missing_server_venv_tells_to_run_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVESEG_LS_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(LabelStudioError, match="make labelstudio"):
        find_ls_venv()


@pytest.fixture
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, so no .env file up from the cwd is read."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_dotenv")
def test_server_environment_is_clean_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain variables the server would read (PORT, DEBUG, USERNAME) must not leak in.
    for name, value in {"PORT": "9999", "DEBUG": "1", "USERNAME": "x", "HOME": "/home/u"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LABEL_STUDIO_USERNAME", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_PASSWORD", raising=False)
    env = server_environment(Path("/venv-ls"), Path("/data"), KEY, "pw-123456")
    assert not {"PORT", "DEBUG", "USERNAME"} & set(env)
    assert env["HOME"] == "/home/u"
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == "/data"
    assert env["LABEL_STUDIO_USER_TOKEN"] == KEY
    assert env["LABEL_STUDIO_PASSWORD"] == "pw-123456"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_SENTRY_DSN"] == env["LABEL_STUDIO_FRONTEND_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_USERNAME"] == "activeseg@localhost"
    assert env["PATH"].startswith("/venv-ls/bin")


def test_server_reads_a_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("LABEL_STUDIO_USERNAME=dot@example.org\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABEL_STUDIO_USERNAME", raising=False)
    env = server_environment(Path("/v"), Path("/d"), KEY, "pw-123456")
    assert env["LABEL_STUDIO_USERNAME"] == "dot@example.org"


def test_server_credentials_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_USERNAME", "lab@example.org")
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "pw-123456")
    env = server_environment(Path("/v"), Path("/d"), KEY, ui_password(tmp_path, KEY))
    assert (env["LABEL_STUDIO_USERNAME"], env["LABEL_STUDIO_PASSWORD"]) == (
        "lab@example.org",
        "pw-123456",
    )


def test_server_binds_loopback_and_keeps_the_token_off_the_command_line() -> None:
    command = server_command(Path("/v"), 8123)
    assert command[-4:] == ["--internal-host", "127.0.0.1", "--port", "8123"]
    assert not any(KEY in part for part in command)


def test_a_taken_port_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(LabelStudioError, match="already in use"):
            check_port_free(sock.getsockname()[1])
    check_port_free(free_port())


@pytest.mark.usefixtures("no_dotenv")
def test_a_short_token_is_refused_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv("ACTIVESEG_LS_VENV", "/nowhere")
    with pytest.raises(LabelStudioError, match="at least 6 characters"):
        start_server(api_key="abc")
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY is not set"):
        start_server()


def test_missing_connection_settings_name_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    env_file = tmp_path / "key-only.env"
    env_file.write_text(f"LABEL_STUDIO_API_KEY={KEY}\n")
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL not set") as caught:
        connection_settings(env_file)
    assert KEY not in str(caught.value)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY not"):
        connection_settings(tmp_path / "absent.env")


def test_filter_times_are_utc_with_microseconds() -> None:
    moment = datetime(2026, 1, 2, 5, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(moment) == "2026-01-02T03:04:05.123456Z"
    assert '"value": "2026-01-02T03:04:05.123456Z"' in updated_tasks_query(moment)
    assert '"items": []' in updated_tasks_query(None)
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 1, 2))


def test_latest_update_and_deleted_annotations() -> None:
    tasks = [
        {"id": 1, "updated_at": "2026-01-02T03:04:05.000001Z", "annotations": [{"id": 7}]},
        {"id": 2, "updated_at": "2026-01-02T03:04:06.5Z", "annotations": []},
    ]
    assert latest_update(tasks) == datetime(2026, 1, 2, 3, 4, 6, 500000, tzinfo=UTC)
    assert latest_update([]) is None
    assert deleted_annotations(tasks[0], [7, 8]) == {8}


def test_stored_name_strips_the_upload_prefix() -> None:
    assert stored_name("upload/3/1a2b3c4d-c1_s0.png") == "c1_s0.png"


def test_the_server_log_is_echoed_from_where_it_stood(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("from an older start\n")
    out = io.StringIO()
    with echo_log(log, out, every=0.05):
        with log.open("a") as stream:
            stream.write("Starting http://user:secret@127.0.0.1:8080\nhalf a li")
        time.sleep(0.3)
        assert out.getvalue() == "Starting http://127.0.0.1:8080\n"
        with log.open("a") as stream:
            stream.write("ne")
    # The rest comes out when the block ends; the older start's log never does.
    assert out.getvalue() == "Starting http://127.0.0.1:8080\nhalf a line"
    with echo_log(log, None):
        pass


def test_a_port_just_freed_by_a_stopped_server_can_be_taken_again() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as visitor:
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end lingers in TIME_WAIT
        listener.close()
        assert visitor.recv(1) == b""
    check_port_free(port)  # a restart on the same port is not refused
