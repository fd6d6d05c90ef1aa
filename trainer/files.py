"""Files written so that a crash or a full disk leaves the old file or the new one, never half of
one: the bytes go to a temporary name beside the file (mode 0666 less the umask, like any file),
are fsync'ed, and the name is replaced in one step. A temporary file a killed write leaves behind
matches :data:`TEMP_GLOB` and is removed when the next run starts in the directory."""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

#: What a write's temporary file is named like: ``.NAME.<hex>.tmp``.
TEMP_GLOB = ".*.*.tmp"


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def write_atomic(path: Path, data: str | bytes) -> None:
    """``path`` holds ``data`` (text as UTF-8), or what it held before if this fails midway."""
    tmp = temp_path(path)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def figure_bytes(figure: object, **savefig: object) -> bytes:
    """A matplotlib figure as PNG bytes, for :func:`write_atomic`."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig)  # type: ignore[attr-defined]
    return buffer.getvalue()


def csv_rows(path: Path, width: int) -> list[list[str]]:
    """The data rows of the CSV file ``path`` that hold all ``width`` columns (none when it does not
    exist): a last row a kill cut short is dropped."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in list(csv.reader(f))[1:] if len(row) == width]


def restart_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], *, buffering: int = -1) -> TextIO:
    """``path`` rewritten (:func:`write_atomic`) to ``header`` and ``rows`` (what a resumed run keeps
    of a log: the steps before its checkpoint), then opened to append the rows that follow."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *rows])
    write_atomic(path, text.getvalue())
    return open(path, "a", newline="", buffering=buffering)
