"""Read a ``.env`` file safely, and keep credentials out of the URLs shown in messages.

A ``.env`` is read from one explicit place (the project root, or the current directory when
there is no project), never searched for in parent folders: a ``.env`` in ``/tmp`` or in a
shared lab folder could otherwise point ``LABEL_STUDIO_URL`` at someone else's host and have
the API key sent there. The file must belong to the current user and must not be writable by
group or others, or it is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from dotenv import dotenv_values

from activeseg.errors import ConfigError

ENV_FILE_NAME = ".env"
# The userinfo part of a URL: scheme://user:password@host → scheme://host.
URL_CREDENTIALS = re.compile(r"(?<=//)[^/\s@]+@")


def strip_credentials(text: str) -> str:
    """Return ``text`` with every ``user:password@`` of a URL in it removed."""
    return URL_CREDENTIALS.sub("", text)


def default_env_file(root: str | Path | None = None) -> Path:
    """Return the ``.env`` of a project root, or of the current directory when None."""
    return Path(root if root is not None else Path.cwd()) / ENV_FILE_NAME


def check_env_file(path: Path) -> None:
    """Raise ConfigError unless ``path`` is owned by this user and writable only by them."""
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigError(
            f"{path}: refused to read, it belongs to user id {info.st_uid}, not to you "
            f"({os.getuid()}); settings such as LABEL_STUDIO_URL must come from your own file"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: refused to read, it is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run `chmod go-w {path}`"
        )


def read_env_file(path: str | Path) -> dict[str, str]:
    """Return the variables set in a ``.env`` file ({} when it does not exist).

    Raises ConfigError when the file belongs to another user or is group/other-writable.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    check_env_file(path)
    return {name: value for name, value in dotenv_values(path).items() if value}
