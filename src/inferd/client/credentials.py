"""Saved credentials for the `inferd` command: one JSON file, readable by its owner only.

The file is `$INFERD_CONFIG`, else `$XDG_CONFIG_HOME/inferd/credentials.json`, else
`~/.config/inferd/credentials.json`. It holds the server URL and either a token pair (from a
password login) or an API key; credentials are only ever sent to the URL they were saved for.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Credentials:
    """What `inferd login` saved: the server, and a token pair or an API key."""

    url: str
    username: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    api_key: str | None = None


def credentials_path() -> Path:
    explicit = os.environ.get("INFERD_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "inferd" / "credentials.json"


def load_credentials(path: Path | None = None) -> Credentials | None:
    """The saved credentials, or None when there are none; a damaged file is a ValueError."""
    path = path or credentials_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read credentials file {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str):
        raise ValueError(f"credentials file {path} is damaged; run `inferd login` again")
    fields = Credentials.__dataclass_fields__
    return Credentials(**{k: v for k, v in doc.items() if k in fields and isinstance(v, str)})


def save_credentials(creds: Credentials, path: Path | None = None) -> Path:
    """Write the file atomically with mode 0600 (its folder 0700 when created here)."""
    path = path or credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600 from the start: the secret is never readable by others,
    # not even between the write and a chmod
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({k: v for k, v in asdict(creds).items() if v is not None}, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_credentials(path: Path | None = None) -> bool:
    """Delete the file; False when there was none."""
    try:
        (path or credentials_path()).unlink()
    except FileNotFoundError:
        return False
    return True
