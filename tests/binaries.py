"""Runs the package's binaries for tests (`python -m advss_tf.<binary> args...`) without paying a fresh interpreter's
import of TensorFlow and Keras each time (about 9 s of CPU per run on the 2-core machine; the suite runs dozens).
Not a test module itself.

Each run is still a process of its own, with its own argv, working directory, environment, stdout, stderr and exit
status: a child forked from a server (per pytest process and import-time environment, one for each run going on at
once: `start_command` returns at once, `run_binary` waits) that has imported
TensorFlow, Keras and the library but never run a TensorFlow op, so no runtime thread pool exists yet to be lost by
the fork; the child runs the binary the way `python -m` does (runpy as `__main__`, so its flags are defined in the
child) and exits with its status. Every TensorFlow runtime is the child's own.

What a forked run does not show, and where that is covered instead:
- output printed while TensorFlow is imported (a fresh process prints it before the binary starts): the
  fresh-interpreter runs in tests/test_cli_defaults.py and tests/test_sigkill.py check one-line errors and clean
  stderr end to end;
- kills: a SIGKILLed run's children and half-written files are those of a process a user's shell started, so the
  SIGKILL tests (tests/test_sigkill.py, the study test's killed runner, the multi-worker workers) start the binary
  with subprocess.Popen. SIGTERM is the binary's own handler in either: the SIGTERM tests fork (`PipedProcess`,
  Popen's interface) and send it to the run's pid, which is the run's own process either way.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile

from conftest import REPO

# Read when TensorFlow (or Python) starts, so a run whose environment differs in one of these gets its own server.
_IMPORT_TIME = ("TF_", "KERAS", "CUDA_", "PYTHON", "OMP_", "ONEDNN", "MKL", "LD_")

_SERVER = r"""
import atexit, json, os, runpy, sys, traceback
protocol_in, protocol_out = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
import advss_tf, tensorflow, keras  # noqa: F401,E401
import advss_tf.training.pretraining, advss_tf.training.finetuning, advss_tf.evaluation.evaluator  # noqa: E401
import advss_tf.study.runner, advss_tf.importers.formats, advss_tf.corruptions.cifar10c  # noqa: E401
protocol_out.write("ready\n")
protocol_out.flush()
for line in protocol_in:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            protocol_in.close()
            protocol_out.close()
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if request["append"] else os.O_TRUNC)
            os.dup2(os.open(request["stdout"], mode, 0o644), 1)
            if request["stderr"] == request["stdout"]:  # stderr=subprocess.STDOUT
                os.dup2(1, 2)
            else:
                os.dup2(os.open(request["stderr"], mode, 0o644), 2)
            sys.argv = [request["module"] or request["script"], *request["args"]]
            try:
                if request["module"]:
                    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
                else:  # `python path/to/script.py`: its directory first on sys.path
                    sys.path.insert(0, os.path.dirname(os.path.abspath(request["script"])))
                    runpy.run_path(request["script"], run_name="__main__")
                code = 0
            except SystemExit as stop:  # what `python -m` turns into the exit status
                if stop.code is None:
                    code = 0
                elif isinstance(stop.code, int):
                    code = stop.code
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    protocol_out.write(json.dumps({"pid": pid}) + "\n")
    protocol_out.flush()
    _, status = os.waitpid(pid, 0)
    protocol_out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
    protocol_out.flush()
"""


class _Server:
    """One server process and its protocol pipe, read line by line straight from the file descriptor (no buffered
    reader that could hold a second line where select() does not see it)."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.buffer = b""
        self.busy = False
        line = self.read_line(300)
        assert line == "ready", f"the binary server did not start: {line!r}"

    def has_line(self) -> bool:
        return b"\n" in self.buffer or bool(select.select([self.proc.stdout], [], [], 0)[0])

    def read_line(self, timeout: float | None) -> str:
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the binary server exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()

    def send(self, request: dict) -> None:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()


_servers: dict[tuple, list[_Server]] = {}


def _idle_server(env: dict[str, str]) -> _Server:
    """A server for `env`'s import-time variables that is not running a binary now (a new one if all are)."""
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_IMPORT_TIME)))
    pool = _servers.setdefault(key, [])
    pool[:] = [s for s in pool if s.proc.poll() is None]
    server = next((s for s in pool if not s.busy), None)
    if server is None:
        server = _Server(env)
        pool.append(server)
    return server


class ForkedProcess:
    """A binary forked by a server: the part of subprocess.Popen's interface that tests and the study runner use
    (pid, args, returncode, poll, wait, send_signal, kill)."""

    def __init__(self, server: _Server, pid: int, args: list[str]):
        self.server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def _finished(self, line: str) -> int:
        self.returncode = json.loads(line)["status"]
        self.server.busy = False
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and self.server.has_line():
            self._finished(self.server.read_line(60))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self._finished(self.server.read_line(timeout))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_command(
    command: list[str], stdout: str, stderr: str | None = None, *, cwd=REPO, env: dict | None = None, append=False
) -> ForkedProcess:
    """Starts `[sys.executable, "-m", module, *args]` or `[sys.executable, script, *args]` forked, its output to
    the file `stdout` (and `stderr`; None: into stdout, like stderr=subprocess.STDOUT), truncated or `append`ed;
    `env` as in run_binary. Returns at once: a ForkedProcess to poll or wait for."""
    assert command[0] == sys.executable, command
    if command[1] == "-m":
        what, args = dict(module=command[2], script=None), command[3:]
    else:
        what, args = dict(module=None, script=command[1]), command[2:]
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths[:1] != [REPO]:  # already first (tests' ENV): unchanged, so such runs share the default server
        env["PYTHONPATH"] = os.pathsep.join([REPO, *paths])
    server = _idle_server(env)
    server.send(
        dict(
            **what,
            args=list(args),
            cwd=str(cwd),
            env=env,
            stdout=str(stdout),
            stderr=str(stderr or stdout),
            append=append,
        )
    )
    pid = json.loads(server.read_line(60))["pid"]
    server.busy = True
    return ForkedProcess(server, pid, list(command))


def start_run(command: list[str], log_path: str) -> ForkedProcess:
    """The study runner's `start` (advss_tf.study.runner.StartRun), forked: output appended to the run's log."""
    return start_command(command, log_path, append=True)


class PipedProcess:
    """start_command with stdout and stderr captured: the part of `subprocess.Popen(command, stdout=PIPE,
    stderr=PIPE, text=True)` that the signal tests use (args, pid, returncode, poll, send_signal, communicate)."""

    def __init__(self, command: list[str], *, cwd=REPO, env: dict | None = None):
        self._dir = tempfile.mkdtemp(prefix="binary-")
        self._out, self._err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        self.args = command
        self._proc = start_command(command, self._out, self._err, cwd=cwd, env=env)
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def poll(self) -> int | None:
        return self._proc.poll()

    def send_signal(self, signum: int) -> None:
        self._proc.send_signal(signum)

    def kill(self) -> None:
        self._proc.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits for the end (on timeout: kills the run, raises subprocess.TimeoutExpired); (stdout, stderr)."""
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(60)
            raise
        with open(self._out) as f_out, open(self._err) as f_err:
            out, err = f_out.read(), f_err.read()
        shutil.rmtree(self._dir, ignore_errors=True)
        return out, err


def run_binary(module: str, *args: str, cwd=REPO, env: dict | None = None, timeout: float = 900):
    """`python -m <module> <args>` in `cwd` with `env` (default: this process's; this checkout first on
    PYTHONPATH), as a subprocess.CompletedProcess with text stdout and stderr. On timeout the run is killed and
    subprocess.TimeoutExpired raised."""
    return run_command([sys.executable, "-m", module, *args], cwd=cwd, env=env, timeout=timeout)


def run_script(script: str, *args: str, cwd=REPO, env: dict | None = None, timeout: float = 900):
    """`python <script> <args>` (e.g. tools/report.py, relative to `cwd`), like run_binary."""
    return run_command([sys.executable, script, *args], cwd=cwd, env=env, timeout=timeout)


def run_command(command: list[str], *, cwd=REPO, env: dict | None = None, timeout: float = 900):
    """A `[sys.executable, "-m", module, *args]` (or `[sys.executable, script, *args]`) command line (what a test
    also hands to PipedProcess or subprocess.Popen when it sends a signal), run to its end like run_binary."""
    proc = PipedProcess(command, cwd=cwd, env=env)
    out, err = proc.communicate(timeout)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@atexit.register
def _stop_servers() -> None:
    for pool in _servers.values():
        for server in pool:
            server.proc.stdin.close()
            server.proc.wait(timeout=60)
