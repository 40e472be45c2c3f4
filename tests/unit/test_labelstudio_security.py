"""Where connection settings may come from, the server's password and its data directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from activeseg.errors import ConfigError, LabelStudioError
from activeseg.labelstudio import server as server_module
from activeseg.labelstudio.client import connection_settings
from activeseg.labelstudio.envfile import strip_credentials
from activeseg.labelstudio.server import env_setting, start_server, ui_password

KEY = "k" * 20
ROGUE = "LABEL_STUDIO_URL=http://rogue.example.org\nLABEL_STUDIO_USERNAME=rogue@example.org\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "API_KEY", "USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"LABEL_STUDIO_{name}", raising=False)


@pytest.fixture
def in_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp/project with a rogue .env in tmp (like /tmp or a shared lab folder)."""
    (tmp_path / ".env").write_text(ROGUE)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


@pytest.mark.usefixtures("clean_env")
def test_a_dotenv_in_a_parent_folder_is_never_read(
    in_subfolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL is not set anywhere") as caught:
        connection_settings()
    assert "rogue" not in str(caught.value) and KEY not in str(caught.value)
    assert env_setting("LABEL_STUDIO_USERNAME") == ""


@pytest.mark.usefixtures("clean_env")
def test_url_and_key_never_come_from_different_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LABEL_STUDIO_URL=http://elsewhere.example.org:8080\n")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with pytest.raises(LabelStudioError) as caught:
        connection_settings(env_file)
    message = str(caught.value)
    assert message.startswith(
        f"LABEL_STUDIO_API_KEY comes from the environment but LABEL_STUDIO_URL is set in {env_file}"
    )
    assert KEY not in message
    # The other way round: the URL exported, the key only in the file.
    env_file.write_text(f"LABEL_STUDIO_API_KEY={KEY}\n")
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:8080")
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL comes from the environment"):
        connection_settings(env_file)


@pytest.mark.usefixtures("clean_env")
def test_both_settings_come_from_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"LABEL_STUDIO_URL=http://127.0.0.1:8080/\nLABEL_STUDIO_API_KEY={KEY}\n")
    assert connection_settings(env_file) == ("http://127.0.0.1:8080", KEY)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "e" * 20)
    assert connection_settings(env_file) == ("http://127.0.0.1:9000", "e" * 20)


@pytest.mark.usefixtures("clean_env")
def test_a_dotenv_others_can_write_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"LABEL_STUDIO_URL=http://127.0.0.1:8080\nLABEL_STUDIO_API_KEY={KEY}\n")
    env_file.chmod(0o664)
    with pytest.raises(ConfigError, match=r"\.env: refused to read, it is writable by group"):
        connection_settings(env_file)
    with pytest.raises(ConfigError, match="chmod go-w"):
        env_setting("LABEL_STUDIO_USERNAME", env_file)


@pytest.mark.usefixtures("clean_env")
def test_a_dotenv_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"LABEL_STUDIO_URL=http://127.0.0.1:8080\nLABEL_STUDIO_API_KEY={KEY}\n")
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(ConfigError, match=f"belongs to user id {me}, not to you"):
        connection_settings(env_file)


def test_credentials_are_stripped_from_urls() -> None:
    text = "at https://admin:s3cret@ls.lab.org:8443/api and http://u@h/x, not a@b.c"
    assert strip_credentials(text) == "at https://ls.lab.org:8443/api and http://h/x, not a@b.c"


@pytest.mark.usefixtures("clean_env")
def test_the_ui_password_is_random_stored_privately_and_never_the_token(tmp_path: Path) -> None:
    password = ui_password(tmp_path, KEY)
    stored = tmp_path / "ui-password"
    assert password != KEY and len(password) >= 20
    assert stored.read_text().strip() == password
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert ui_password(tmp_path, KEY) == password  # the same on a restart


@pytest.mark.usefixtures("clean_env")
def test_a_password_equal_to_the_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", KEY)
    with pytest.raises(LabelStudioError, match="must differ from the API token") as caught:
        ui_password(tmp_path, KEY)
    assert KEY not in str(caught.value)
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "another-password")
    assert ui_password(tmp_path, KEY) == "another-password"
    assert not (tmp_path / "ui-password").exists()


@pytest.mark.usefixtures("clean_env")
def test_serve_makes_a_private_data_dir_and_a_password_apart_from_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[tuple[Any, ...]] = []

    def fake_launch(*args: Any) -> SimpleNamespace:
        launched.append(args)
        return SimpleNamespace(url="http://127.0.0.1:1", data_dir=args[2])

    monkeypatch.setattr(server_module, "find_ls_venv", lambda: tmp_path / "venv")
    monkeypatch.setattr(server_module, "launch", fake_launch)
    monkeypatch.setattr(server_module, "wait_until_healthy", lambda server, timeout: None)
    old_umask = os.umask(0o022)
    try:
        start_server(data_dir=tmp_path / "ls-data", api_key=KEY)
    finally:
        os.umask(old_umask)
    data = tmp_path / "ls-data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    environment = launched[0][-1]
    assert environment["LABEL_STUDIO_USER_TOKEN"] == KEY
    assert environment["LABEL_STUDIO_PASSWORD"] not in ("", KEY)
    assert environment["LABEL_STUDIO_PASSWORD"] == (data / "ui-password").read_text().strip()
