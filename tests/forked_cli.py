"""Run the real CLI many times, cheaply: each run is a forked child of one interpreter that imported
``trainer.__main__`` (torch, Hydra, TensorBoard) once, and calls its ``main()`` with the run's
``sys.argv``, as ``python -m trainer`` does. A fresh interpreter costs ~6 CPU-seconds of imports
per run; a kill loop needs dozens of runs.

``python -m tests.forked_cli`` reads one JSON request a line on stdin:
``{"args": [...], "env": {...}, "kill_after_validations": n | null}``; it forks a child for it,
reads the child's stdout and stderr and, when n is set, SIGKILLs the child as soon as it has
printed its n-th validation line; then it writes ``{"exit": code, "output": text}`` (code
-9 when killed). Nothing sleeps or times: each step waits on a blocking read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import traceback
from pathlib import Path

VALIDATION_LINE = re.compile(r"\(after \d+ updates\)")


def _child(request: dict, write_fd: int) -> None:
    import trainer.__main__ as cli

    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(request.get("env", {}))
    sys.argv = ["trainer", *request["args"]]
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    # Imported before any fork (they start no thread): the CLI, and the run it imports when a job starts.
    import trainer.__main__  # noqa: F401
    import trainer.app.run  # noqa: F401

    for request_line in sys.stdin:
        request = json.loads(request_line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(request, write_fd)
        os.close(write_fd)
        output, validations = [], 0
        with os.fdopen(read_fd) as child_output:
            for line in child_output:
                output.append(line)
                if VALIDATION_LINE.search(line):
                    validations += 1
                    if validations == request.get("kill_after_validations"):
                        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "output": "".join(output)}), flush=True)


class ForkedCLI:
    """The test's side: ``with ForkedCLI(repo) as cli: code, output = cli.run(args, ...)``."""

    def __init__(self, repo: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(repo), "HYDRA_FULL_ERROR": "0"}
        self.server = subprocess.Popen([sys.executable, "-m", "tests.forked_cli"], cwd=repo, env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, args: list[str], *, env: dict[str, str] | None = None,
            kill_after_validations: int | None = None) -> tuple[int, str]:
        request = {"args": args, "env": env or {}, "kill_after_validations": kill_after_validations}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = json.loads(self.server.stdout.readline())
        return reply["exit"], reply["output"]

    def __enter__(self) -> ForkedCLI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


if __name__ == "__main__":
    serve()
