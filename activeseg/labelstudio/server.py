"""Start and stop a local Label Studio server that lives in its own virtual environment.

The server (label-studio 1.23) pins ~40 packages exactly, so it is installed apart from the
project's environment (``make labelstudio`` → ``<repo>/.venv-ls``) and run as a subprocess with
a clean, explicit environment: it also reads plain variables such as ``PORT``, ``HOST``,
``USERNAME`` or ``DEBUG``, which must not leak in from the caller's shell.

The user, password and API token are applied only when the user is first created in a data
directory; restarting on an existing data directory keeps the old ones. The token travels to
the child through its environment, never on its command line (visible in ``ps``) or in a log.
The web UI password is never the API token: ``$LABEL_STUDIO_PASSWORD``, or a random one kept
in ``<data dir>/ui-password`` (mode 0600). The data directory is made private (mode 0700).
Settings come from the environment, else from one ``.env`` file (the current directory's
unless another is passed), never from a ``.env`` in a parent folder.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

from activeseg.errors import LabelStudioError
from activeseg.labelstudio.envfile import default_env_file, read_env_file, strip_credentials

log = logging.getLogger(__name__)

LS_VENV_ENV = "ACTIVESEG_LS_VENV"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"
USERNAME_ENV = "LABEL_STUDIO_USERNAME"
PASSWORD_ENV = "LABEL_STUDIO_PASSWORD"
DEFAULT_USERNAME = "activeseg@localhost"
HOST = "127.0.0.1"
LOG_NAME = "server.log"
PASSWORD_FILE = "ui-password"
# The server ignores tokens of 5 characters or fewer (and prints them to its log).
MIN_TOKEN_LENGTH = 6
# Plain variables copied from the caller: what a Python process needs to run, nothing else.
PASSED_THROUGH = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT")
PR_SET_PDEATHSIG = 1


def repo_root() -> Path:
    """Return the repository root that holds this package (where ``.venv-ls`` is made)."""
    return Path(__file__).resolve().parents[2]


def find_ls_venv() -> Path:
    """Return the Label Studio venv: ``$ACTIVESEG_LS_VENV`` or ``<repo>/.venv-ls``."""
    venv = Path(os.environ.get(LS_VENV_ENV) or repo_root() / ".venv-ls")
    executable = venv / "bin" / "label-studio"
    if not executable.is_file():
        raise LabelStudioError(
            f"the Label Studio server is not installed: {executable} does not exist; "
            f"run `make labelstudio` in {repo_root()} (or point {LS_VENV_ENV} at a virtual "
            f"environment with label-studio installed)"
        )
    return venv


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(port: int) -> None:
    """Raise LabelStudioError if ``port`` on 127.0.0.1 is taken (the server would move on).

    Connections of a server just stopped linger in TIME_WAIT; like the server itself, the
    check reuses the address, so only a listening process counts as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise LabelStudioError(
                f"port {port} on {HOST} is already in use ({exc.strerror}); "
                f"choose another port or leave it out to pick a free one"
            ) from exc


def env_setting(name: str, env_file: Path | None = None) -> str:
    """Return a variable from the environment, else from ``env_file`` (``./.env``), else "".

    Raises ConfigError for a ``.env`` that is not the user's own or is group/other-writable.
    """
    if os.environ.get(name):
        return os.environ[name]
    return read_env_file(env_file or default_env_file()).get(name, "")


def api_key_from_env(env_file: Path | None = None) -> str:
    """Return the API token from ``$LABEL_STUDIO_API_KEY`` or ``.env`` (never logged)."""
    key = env_setting(API_KEY_ENV, env_file)
    if len(key) < MIN_TOKEN_LENGTH:
        state = "is not set" if not key else f"is shorter than {MIN_TOKEN_LENGTH} characters"
        raise LabelStudioError(
            f"{API_KEY_ENV} {state}; set it to a token of your choice, e.g. "
            f"`export {API_KEY_ENV}=$(python -c 'import secrets; print(secrets.token_hex(20))')`"
        )
    return key


def private_dir(path: Path) -> Path:
    """Return ``path`` resolved, created with mode 0700 (an existing one is made 0700 too)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.info("making the Label Studio data directory %s private (mode 700)", path)
        path.chmod(0o700)
    return path.resolve()


def ui_password(data_dir: Path, api_key: str, env_file: Path | None = None) -> str:
    """Return the web UI password: ``$LABEL_STUDIO_PASSWORD``, else one kept in the data dir.

    Without the variable a random password is made once and stored in
    ``<data_dir>/ui-password`` (mode 0600); its path (never the password) is logged.
    Raises LabelStudioError when the password equals the API token.
    """
    password = env_setting(PASSWORD_ENV, env_file)
    if not password:
        password = stored_password(data_dir / PASSWORD_FILE)
    if password == api_key:
        raise LabelStudioError(
            f"{PASSWORD_ENV} equals {API_KEY_ENV}: the web UI password must differ from the "
            f"API token; unset {PASSWORD_ENV} to get a random one in <data dir>/{PASSWORD_FILE}"
        )
    return password


def stored_password(path: Path) -> str:
    """Return the password kept in ``path``, making a random one there (mode 0600) if absent."""
    if path.is_file():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(password + "\n")
    log.warning(
        "%s is not set: the web UI password of a newly created user is in %s", PASSWORD_ENV, path
    )
    return password


def server_environment(
    venv: Path, data_dir: Path, api_key: str, password: str, env_file: Path | None = None
) -> dict[str, str]:
    """Return the complete environment of the server process (a clean, explicit mapping).

    ``password``: the web UI password (see :func:`ui_password`); the username is
    ``$LABEL_STUDIO_USERNAME`` (also read from ``env_file``) or ``activeseg@localhost``.
    """
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        VIRTUAL_ENV=str(venv),
        PYTHONUNBUFFERED="1",
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=env_setting(USERNAME_ENV, env_file) or DEFAULT_USERNAME,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=api_key,
        # Only read when the organization is created (first start); without it the fixed
        # token above answers 401 "legacy token authentication has been disabled".
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
        # The default DSNs send every server error to sentry.io.
        LABEL_STUDIO_SENTRY_DSN="",
        LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
    )
    return env


def server_command(venv: Path, port: int) -> list[str]:
    """Return the command line that starts the server bound to 127.0.0.1:``port``."""
    executable = str(venv / "bin" / "label-studio")
    return [executable, "start", "--no-browser", "--internal-host", HOST, "--port", str(port)]


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of the server log (empty if none; URLs lose passwords)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return strip_credentials("\n".join(text.splitlines()[-lines:]))


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """Return whether ``GET {url}/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class RunningServer:
    """A Label Studio server started by :func:`start_server`: its URL, process and log."""

    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        """Return the TCP port the server listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 30.0) -> int | None:
        """Return the server's exit code after stopping it with SIGTERM (SIGKILL on timeout)."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            log.info("stopping Label Studio at %s (pid %d)", self.url, self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Label Studio did not stop in %.0f s; killing it", timeout)
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_until_healthy(server: RunningServer, timeout: float) -> None:
    """Return once ``/health`` answers 200; raise LabelStudioError if the server dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(server.url):
            return
        code = server.process.poll()
        if code is not None:
            raise LabelStudioError(
                f"Label Studio exited with code {code} before answering at {server.url}; "
                f"the end of its log {server.log_path}:\n{log_tail(server.log_path)}"
            )
        time.sleep(0.5)
    server.stop()
    raise LabelStudioError(
        f"Label Studio did not answer {server.url}/health within {timeout:.0f} s; "
        f"the end of its log {server.log_path}:\n{log_tail(server.log_path)}"
    )


def start_server(
    port: int | None = None,
    data_dir: Path | str | None = None,
    *,
    api_key: str | None = None,
    timeout: float = 180.0,
    env_file: Path | None = None,
) -> RunningServer:
    """Return a running Label Studio server on 127.0.0.1, started and healthy.

    ``port``: a free one is picked when None; a taken port is an error (the server would
    silently move to the next one). ``data_dir``: where the SQLite database, uploads and
    ``server.log`` live (a new temporary directory when None), made private (mode 0700).
    ``api_key``: the token of the pre-created user (``$LABEL_STUDIO_API_KEY`` when None).
    The web UI password is ``$LABEL_STUDIO_PASSWORD`` or a random one kept in
    ``<data_dir>/ui-password`` (see :func:`ui_password`); never the token. ``env_file``:
    the ``.env`` read for unset variables (``./.env`` when None). The first start on a
    fresh data directory runs the migrations (~30 s on 2 cores); a restart takes ~5 s.
    """
    key = api_key if api_key is not None else api_key_from_env(env_file)
    if len(key) < MIN_TOKEN_LENGTH:
        raise LabelStudioError(f"the API token must have at least {MIN_TOKEN_LENGTH} characters")
    venv = find_ls_venv()
    if port is None:
        port = free_port()
    else:
        check_port_free(port)
    data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="ls-data-"))
    data = private_dir(data)
    password = ui_password(data, key, env_file)
    server = launch(venv, port, data, server_environment(venv, data, key, password, env_file))
    wait_until_healthy(server, timeout)
    log.info("Label Studio is up at %s (data in %s)", server.url, server.data_dir)
    return server


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this (child) process when its parent dies; runs before exec.

    Without it a parent killed by a signal leaves the server running (it has its own session).
    The signal follows the *thread* that started the server: start it from a long-lived one.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(venv: Path, port: int, data_dir: Path, environment: dict[str, str]) -> RunningServer:
    """Return the freshly spawned (not yet healthy) server process, its output in server.log.

    ``environment``: the server's whole environment (see :func:`server_environment`).
    """
    log_path = data_dir / LOG_NAME
    log.info("starting Label Studio on %s:%d (data in %s, log %s)", HOST, port, data_dir, log_path)
    with log_path.open("ab") as log_file:
        # A new session: a Ctrl-C in the terminal reaches only us; we stop the child ourselves.
        process = subprocess.Popen(
            server_command(venv, port),
            env=environment,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return RunningServer(f"http://{HOST}:{port}", process, data_dir, log_path)


class LabelStudioServer:
    """Context manager around :func:`start_server`: ``with LabelStudioServer() as server: ...``."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 180.0,
    ) -> None:
        self._args = (port, data_dir)
        self._api_key = api_key
        self._timeout = timeout
        self.server: RunningServer | None = None

    def __repr__(self) -> str:
        url = self.server.url if self.server else None
        return f"LabelStudioServer(url={url!r})"

    def __enter__(self) -> RunningServer:
        port, data_dir = self._args
        self.server = start_server(port, data_dir, api_key=self._api_key, timeout=self._timeout)
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.server is not None:
            self.server.stop()


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """Yield an event set by SIGTERM or SIGINT; the previous handlers come back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def echo_log(path: Path, out: TextIO | None, every: float = 0.5) -> Iterator[None]:
    """Copy what ``path`` gains while the block runs to ``out``, line by line (None: nothing).

    A daemon thread polls the file (it may not exist yet) from its size at the start, so an
    older server's log in the same data directory is not repeated; passwords in URLs are cut.
    """
    if out is None:
        yield
        return
    done = threading.Event()
    start = path.stat().st_size if path.exists() else 0

    def follow() -> None:
        position = start
        while True:
            finished = done.wait(every)
            if path.exists():
                with path.open("rb") as stream:
                    stream.seek(position)
                    chunk = stream.read()
                complete = chunk[: chunk.rfind(b"\n") + 1] if not finished else chunk
                if complete:
                    out.write(strip_credentials(complete.decode(errors="replace")))
                    out.flush()
                    position += len(complete)
            if finished:
                return

    thread = threading.Thread(target=follow, name="label-studio-log", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5.0)


def serve_forever(
    port: int | None = None,
    data_dir: Path | str | None = None,
    env_file: Path | None = None,
    echo: TextIO | None = None,
) -> int | None:
    """Return the server's exit code after running it until SIGTERM or SIGINT arrives.

    For ``activeseg labelstudio serve``. The API token is ``$LABEL_STUDIO_API_KEY``; the
    login is ``$LABEL_STUDIO_USERNAME`` (default ``activeseg@localhost``) with the password
    ``$LABEL_STUDIO_PASSWORD``, which must differ from the token. Without that variable a
    random password is generated on the first start and kept in ``<data dir>/ui-password``
    (mode 0600; the log says where). Unset variables are read from ``env_file`` (default:
    ``.env`` in the current directory only; it must be yours and not group/other-writable).
    User, password and token are applied only when the data directory is new (made with
    mode 0700). ``echo``: where the server's log also goes, as it is written (the terminal;
    None: only ``<data dir>/server.log``). Raises LabelStudioError if the server exits on
    its own.
    """
    data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="ls-data-"))
    with stop_signals() as stop, echo_log(data / LOG_NAME, echo):
        server = start_server(port, data, env_file=env_file)
        if echo is not None:
            echo.write(
                f"Label Studio is up at {server.url} (data in {server.data_dir}, log "
                f"{server.log_path}); Ctrl-C stops it\n"
            )
        try:
            while not stop.wait(1.0):
                if server.process.poll() is not None:
                    raise LabelStudioError(
                        f"Label Studio at {server.url} exited on its own with code "
                        f"{server.process.returncode}; the end of its log {server.log_path}:\n"
                        f"{log_tail(server.log_path)}"
                    )
        finally:
            server.stop()
    return server.process.returncode
