"""Run the real CLI many times, cheaply: each run is a forked child of one interpreter that imported
the CLI's modules (torch, Hydra, TensorBoard, and the Hugging Face stack when installed) once, and
runs ``python -m MODULE ARGS`` in it as the interpreter would: ``runpy.run_module(MODULE,
run_name="__main__", alter_sys=True)`` with ``sys.argv`` set, its own stdout and stderr, stdin
from /dev/null, its exit code from ``SystemExit`` (1 and a traceback for any other exception),
and the interpreter's own exit after it (threads joined, atexit handlers run).
A fresh interpreter costs ~2.5 CPU-seconds of imports per run; the suite runs the CLI ~200 times.

What a fork cannot give is a fresh interpreter's start: tests about imports at start-up, or about
environment variables read at import, run a real subprocess (:func:`tests.conftest.run_cli` does
when given ``env`` or ``fresh=True``).

``python -m tests.forked_cli`` reads one JSON request a line on stdin:
``{"module": "trainer", "args": [...], "env": {...} (added), "environ": {...} | null (the whole
environment), "kill_after_validations": n | null}``; it forks
a child for it, reads the child's stdout and stderr and, when n is set, SIGKILLs the child as soon
as it has printed its n-th validation line (on either stream); then it writes ``{"exit": code,
"stdout": text, "stderr": text}`` (code -9 when killed). Nothing sleeps: each step waits on the
child's pipes; a child still running after :data:`LIMIT_S` seconds is killed (a hung run fails its
test instead of the whole suite).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import runpy
import selectors
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

VALIDATION_LINE = re.compile(r"\(after \d+ updates\)")
#: Seconds a child may run (run_cli's subprocess limit).
LIMIT_S = 300
#: Imported before any fork (none starts a thread on import): what every run would import again.
PRELOAD = ("trainer.__main__", "trainer.app.run", "trainer.preview", "trainer.sample", "trainer.compare")
#: Imported too when installed: the ``[hf]`` extra's modules, a few seconds of each Hugging Face run.
OPTIONAL = ("transformers", "datasets", "peft")


def _child(request: dict, out_fd: int, err_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if request.get("environ") is not None:  # the whole environment, as subprocess.run(env=...) gives it
        os.environ.clear()
    os.environ.update(request.get("environ") or request.get("env", {}))
    sys.argv = [request["module"], *request["args"]]
    # The module runs as __main__ from its source, as `python -m` runs it: not the copy imported
    # before the fork (a package runs its __main__).
    loaded = sys.modules.get(request["module"])
    sys.modules.pop(f"{request['module']}.__main__" if hasattr(loaded, "__path__") else request["module"], None)
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # as the interpreter exits: None is 0, a number itself, anything else printed, 1
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # Leave as the interpreter leaves: threads joined, atexit handlers run (a process pool's
    # workers told to stop, else they would hold the pipes open), streams flushed.
    raise SystemExit(code)


def _serve_one(request: dict) -> dict:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_read)
        os.close(err_read)
        _child(request, out_write, err_write)
    os.close(out_write)
    os.close(err_write)
    texts = {out_read: [], err_read: []}
    partial = {out_read: "", err_read: ""}
    validations, deadline = 0, time.monotonic() + LIMIT_S
    with selectors.DefaultSelector() as selector:
        for fd in texts:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            events = selector.select(timeout=max(0.0, deadline - time.monotonic()))
            if not events:  # past the limit: end the child, and stop reading (what it started may hold its pipes)
                os.kill(pid, signal.SIGKILL)
                break
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    continue
                text = chunk.decode(errors="replace")
                texts[key.fd].append(text)
                lines = (partial[key.fd] + text).split("\n")
                partial[key.fd] = lines.pop()
                validations += sum(1 for line in lines if VALIDATION_LINE.search(line))
                if request.get("kill_after_validations") and validations >= request["kill_after_validations"]:
                    os.kill(pid, signal.SIGKILL)
                    request["kill_after_validations"] = None
        for key in list(selector.get_map().values()):  # left open past the limit
            selector.unregister(key.fd)
            os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "stdout": "".join(texts[out_read]),
            "stderr": "".join(texts[err_read])}


def serve() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    for module in OPTIONAL:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    for request_line in sys.stdin:
        print(json.dumps(_serve_one(json.loads(request_line))), flush=True)


class ForkedCLI:
    """The test's side: ``with ForkedCLI(repo) as cli: code, output = cli.run(args, ...)`` (``python
    -m trainer``, its stdout and stderr together), or ``cli.completed(module, args)`` for a
    :class:`subprocess.CompletedProcess` as ``subprocess.run(..., capture_output=True, text=True)`` gives."""

    def __init__(self, repo: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(repo), "HYDRA_FULL_ERROR": "0"}
        self.server = subprocess.Popen([sys.executable, "-m", "tests.forked_cli"], cwd=repo, env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def request(self, module: str, args: list[str], *, env: dict[str, str] | None = None,
                environ: dict[str, str] | None = None, kill_after_validations: int | None = None) -> dict:
        request = {"module": module, "args": args, "env": env or {}, "environ": environ,
                   "kill_after_validations": kill_after_validations}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())

    def run(self, args: list[str], *, env: dict[str, str] | None = None,
            kill_after_validations: int | None = None) -> tuple[int, str]:
        reply = self.request("trainer", args, env=env, kill_after_validations=kill_after_validations)
        return reply["exit"], reply["stdout"] + reply["stderr"]

    def completed(self, module: str, args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
        """``python -m module args`` in the environment ``environ`` (all of it)."""
        reply = self.request(module, args, environ=environ)
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], reply["exit"], reply["stdout"],
                                           reply["stderr"])

    def close(self) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a child it still waits on: the session is over
            self.server.kill()
            self.server.wait()

    def __enter__(self) -> ForkedCLI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve()
