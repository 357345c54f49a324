"""A deploy step's payload: files plus a script, turned into one bash program.

The program is fed to `bash -s` on the server over SSH (Pulumi) or nsenter (the lab),
on stdin, so secret file contents never appear in a command line, a log or user-data.
Files are first written to a staging directory; the step's script validates them with
the real daemon and only then installs them (see cloud-init/deploy/prelude.sh), so a
bad value never replaces a working config.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from . import templates


@dataclass(frozen=True)
class File:
    path: str  # absolute path on the server
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False


@dataclass(frozen=True)
class Bundle:
    files: tuple[File, ...] = ()
    script: str = ""

    @property
    def secret(self) -> bool:
        return any(f.secret for f in self.files)

    def file(self, path: str) -> File:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def __add__(self, other: Bundle) -> Bundle:
        paths = {f.path for f in self.files}
        clash = [f.path for f in other.files if f.path in paths]
        if clash:
            raise ValueError(f"two parts of one step write {clash}")
        return Bundle(self.files + other.files, _join(self.script, other.script))

    def shell(self, step_name: str) -> str:
        """The whole program for `bash -s`."""
        lines = [
            "#!/bin/bash",
            "set -euo pipefail",
            "umask 077",
            f"STEP={step_name}",
            f"STAGE=$(mktemp -d /run/mailstack-stage.{step_name}.XXXXXX)",
            "trap 'rm -rf \"$STAGE\"' EXIT",
        ]
        lines.append(templates.read("deploy/prelude.sh"))
        for f in self.files:
            data = base64.b64encode(f.content.encode()).decode()
            lines.append(f"stage_file {_quote(f.path)} {f.mode:o} {f.owner} {f.group} <<'MAILSTACK_EOF'")
            lines.extend(data[i : i + 76] for i in range(0, len(data), 76))
            lines.append("MAILSTACK_EOF")
        lines.append(self.script)
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.mode}\0{f.owner}\0{f.group}\0".encode())
            h.update(f.content.encode())
        h.update(self.script.encode())
        return h.hexdigest()


def _join(a: str, b: str) -> str:
    return a + ("\n" if a and b else "") + b


def _quote(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"
