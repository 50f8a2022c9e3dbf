"""Runs a binary as a multi-worker job on this machine: `python -m advss_tf.launch --workers=2 -- pretrain ...`.

    python -m advss_tf.launch --workers=2 -- pretrain --flagfile=flags/smoke/pretrain_rotation.flags \\
        --model_dir=runs/rotation_2w

Picks free loopback ports, gives each worker its TF_CONFIG (worker 0 is the chief), starts
`python -m advss_tf.<binary> --strategy=multi_worker ...` once per worker, streams the chief's output and writes
the others' to <model_dir>/logs/worker<i>.log (or --worker_log_dir). When a worker fails, the others get --grace_sec to
stop by themselves (a lost peer ends them within their --worker_timeout), then SIGTERM, then SIGKILL; the launcher
exits with the status of the first worker that failed. SIGTERM/SIGINT to the launcher goes to every worker, which
checkpoint at the same step and stop (exit 128+signal). How to run on several machines: docs/distributed.md.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from absl import flags

from advss_tf import common_flags

FLAGS = flags.FLAGS

BINARIES = ("pretrain", "finetune")

flags.DEFINE_integer("workers", 2, "Number of worker processes (worker 0 is the chief).")
flags.DEFINE_string("host", "127.0.0.1", "Address the workers listen on (this machine).")
flags.DEFINE_string("worker_log_dir", None, "Where the non-chief workers' output goes (default: <model_dir>/logs).")
flags.DEFINE_integer("grace_sec", 60, "After a worker fails: seconds the others get to stop before SIGTERM.")
flags.register_validator("workers", lambda v: v >= 1, "--workers must be >= 1")
flags.register_validator("grace_sec", lambda v: v >= 0, "--grace_sec must be >= 0")

_KILL_AFTER_TERM_SEC = 30  # a worker blocked in a collective only sees SIGTERM when the collective returns


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that are free on `host` now (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    """TF_CONFIG of worker `index` in a cluster of workers at `addresses` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def worker_command(binary: str, args: list[str]) -> list[str]:
    """`python -m advss_tf.<binary> --strategy=multi_worker <args>`; a different --strategy is refused."""
    if binary not in BINARIES:
        raise ValueError(f"unknown binary {binary!r}; valid: {', '.join(BINARIES)}")
    for a in args:
        if a.startswith("--strategy=") and a != "--strategy=multi_worker":
            raise ValueError(f"{a} contradicts the launcher (it runs --strategy=multi_worker)")
    return [sys.executable, "-m", f"advss_tf.{binary}", "--strategy=multi_worker", *args]


def model_dir_of(args: list[str]) -> str | None:
    """--model_dir from the command line, or from a --flagfile on it (the binaries' own flag)."""
    found = None
    for i, a in enumerate(args):
        if a.startswith("--model_dir="):
            found = a.split("=", 1)[1]
        elif a == "--model_dir" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--flagfile=") and found is None:
            try:
                with open(a.split("=", 1)[1], encoding="utf-8") as f:
                    for line in f:
                        if line.strip().startswith("--model_dir="):
                            found = line.strip().split("=", 1)[1]
            except OSError:
                pass  # the binary reports an unreadable flagfile itself
    return found


def _last_error_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.startswith("error: ")]
        return lines[-1][len("error: ") :] if lines else "no error line"
    except OSError:
        return "no log"


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_workers(binary: str, args: list[str], workers: int, host: str, log_dir: str, grace_sec: int) -> int:
    """Starts the workers, waits for them, stops all when one fails; returns the exit status for the launcher."""
    command = worker_command(binary, args)
    addresses = [f"{host}:{p}" for p in free_ports(workers, host)]
    os.makedirs(log_dir, exist_ok=True)
    procs: list[subprocess.Popen] = []
    logs: list[str | None] = []
    for i in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(addresses, i)}
        if i == 0:
            out, logs_i = None, None  # the chief's output streams through
        else:
            logs_i = os.path.join(log_dir, f"worker{i}.log")
            out = open(logs_i, "w", encoding="utf-8")  # noqa: SIM115 (closed when the worker ends)
        # Own sessions: a Ctrl-C reaches the workers once, through the launcher, not twice.
        procs.append(
            subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
            )
        )
        if out is not None:
            out.close()
        logs.append(logs_i)
    sys.stderr.write(
        f"launch: {workers} workers at {', '.join(addresses)}: {shlex.join(command)}"
        + (f" (workers 1-{workers - 1} log to {log_dir})\n" if workers > 1 else "\n")
    )

    def forward(signum, frame):
        del frame
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _supervise(procs, logs, grace_sec)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _supervise(procs: list[subprocess.Popen], logs: list[str | None], grace_sec: int) -> int:
    failed: tuple[int, int] | None = None  # (worker, status) of the first failure
    deadline_term = deadline_kill = None
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)
        now = time.monotonic()
        if failed is None:
            for i, p in enumerate(procs):
                if p.returncode not in (None, 0):
                    failed = (i, _status(p.returncode))
                    why = f": {_last_error_line(logs[i])} (log: {logs[i]})" if logs[i] else ""
                    sys.stderr.write(
                        f"launch: worker {i} failed with exit status {failed[1]}{why}; stopping the others\n"
                    )
                    deadline_term = now + grace_sec
                    break
        elif deadline_kill is None and now >= deadline_term:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline_kill = now + _KILL_AFTER_TERM_SEC
        elif deadline_kill is not None and now >= deadline_kill:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    if failed is None:
        bad = [(i, _status(p.returncode)) for i, p in enumerate(procs) if p.returncode]
        failed = bad[0] if bad else None
    return failed[1] if failed else 0


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        common_flags.fail(f"usage: python -m advss_tf.launch --workers=N -- {{{'|'.join(BINARIES)}}} [flags...]")
    binary, args = argv[1], argv[2:]
    try:
        worker_command(binary, args)
    except ValueError as e:
        common_flags.fail(str(e))
    log_dir = FLAGS.worker_log_dir
    if log_dir is None:
        model_dir = model_dir_of(args)
        if model_dir is None:
            common_flags.fail(
                "give the binary a --model_dir (the workers' logs go to <model_dir>/logs) or --worker_log_dir"
            )
        log_dir = os.path.join(model_dir, "logs")
    sys.exit(run_workers(binary, args, FLAGS.workers, FLAGS.host, log_dir, FLAGS.grace_sec))


def run() -> None:
    from absl import app

    app.run(main, flags_parser=common_flags.parse_flags)


if __name__ == "__main__":
    run()
