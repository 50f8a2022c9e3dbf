"""Runs the package's binaries for tests (`python -m advss_tf.<binary> args...`) without paying a fresh interpreter's
import of TensorFlow and Keras each time (about 9 s of CPU per run on the 2-core machine; the suite runs dozens).
Not a test module itself.

Each run is still a process of its own, with its own argv, working directory, environment, stdout, stderr and exit
status: a child forked from a server (one per pytest process and import-time environment) that has imported
TensorFlow, Keras and the library but never run a TensorFlow op, so no runtime thread pool exists yet to be lost by
the fork; the child runs the binary the way `python -m` does (runpy as `__main__`, so its flags are defined in the
child) and exits with its status. Every TensorFlow runtime is the child's own.

What a forked run does not show, and where that is covered instead:
- output printed while TensorFlow is imported (a fresh process prints it before the binary starts): the
  fresh-interpreter runs in tests/test_cli_defaults.py, tests/test_sigkill.py and the SIGTERM tests check one-line
  errors and clean stderr end to end;
- signals and kills: tests that send them start the binary with subprocess.Popen, as a user's shell would.
"""

from __future__ import annotations

import atexit
import json
import os
import select
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
import advss_tf.study.runner, advss_tf.importers.reference, advss_tf.corruptions.cifar10c  # noqa: E401
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
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
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

_servers: dict[tuple, subprocess.Popen] = {}


def _server(env: dict[str, str]) -> subprocess.Popen:
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_IMPORT_TIME)))
    server = _servers.get(key)
    if server is None or server.poll() is not None:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = _read_line(server, 300)
        assert line == "ready", f"the binary server did not start: {line!r}"
        _servers[key] = server
    return server


def _read_line(server: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([server.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError
    return server.stdout.readline().strip()


def run_binary(module: str, *args: str, cwd=REPO, env: dict | None = None, timeout: float = 900):
    """`python -m <module> <args>` in `cwd` with `env` (default: this process's; this checkout first on
    PYTHONPATH), as a subprocess.CompletedProcess with text stdout and stderr. On timeout the run is killed and
    subprocess.TimeoutExpired raised."""
    return _run(dict(module=module, script=None), args, cwd, env, timeout)


def run_command(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A `[sys.executable, "-m", module, *args]` command line (what a test also hands to subprocess.Popen when it
    sends a signal), run like run_binary; keyword arguments as there."""
    assert command[:2] == [sys.executable, "-m"], command
    return run_binary(command[2], *command[3:], **kwargs)


def run_script(script: str, *args: str, cwd=REPO, env: dict | None = None, timeout: float = 900):
    """`python <script> <args>` (e.g. tools/report.py, relative to `cwd`), like run_binary."""
    return _run(dict(module=None, script=script), args, cwd, env, timeout)


def _run(what: dict, args, cwd, env: dict | None, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths[:1] != [REPO]:  # already first (tests' ENV): unchanged, so such runs share the default server
        env["PYTHONPATH"] = os.pathsep.join([REPO, *paths])
    server = _server(env)
    command = [sys.executable, *(["-m", what["module"]] if what["module"] else [what["script"]]), *args]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        request = dict(**what, args=list(args), cwd=str(cwd), env=env, stdout=out, stderr=err)
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = json.loads(_read_line(server, 60))["pid"]
        try:
            status = json.loads(_read_line(server, timeout))["status"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            _read_line(server, 60)
            raise subprocess.TimeoutExpired(command, timeout) from None
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess(command, status, f_out.read(), f_err.read())


@atexit.register
def _stop_servers() -> None:
    for server in _servers.values():
        server.stdin.close()
        server.wait(timeout=60)
