"""Runs a study's plan: the study folder's identity, K runs at once in dependency order, per-run locks and logs, and
the SLURM array jobs that do the same on a cluster.

Each run is its binary's own command (a subprocess), so what it leaves is an ordinary run directory and a second
invocation resumes it. The children die with the runner (PR_SET_PDEATHSIG on Linux): a kill -9 of the runner
kills them too, and a re-run never finds two processes on one run directory; SIGTERM/SIGINT are forwarded, so the
children save a checkpoint first.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from advss_tf.errors import UsageError
from advss_tf.machine import cpu_model
from advss_tf.study.plan import NOT_NEEDED, REMAKE, RUNS, TO_RUN, Run, critical_path, levels, states

STUDY_FILE = "study.json"
LOGS = "logs"
TIMES = "times.jsonl"  # in LOGS: one JSON line per attempt of a run (how long, on what machine, how it ended)
LOCKS = "locks"
SLURM = "slurm"
OWN = (STUDY_FILE, RUNS, LOGS, LOCKS, SLURM, "report")  # what --overwrite clears, and nothing else


def prepare(workdir: str, identity: dict[str, Any], overwrite: bool) -> None:
    """Makes or re-opens the study folder for `identity`; another study's folder is refused unless `overwrite`."""
    path = os.path.join(workdir, STUDY_FILE)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir} exists and is not a directory")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is unreadable ({e}); pass --overwrite to start a new study there") from None
        if old == identity:
            return
        # The seed count is not what a run is (a seed's runs are the same whatever the count): a study re-opened with
        # more seeds adds runs, with fewer it plans and reports seeds 0..N-1 and leaves the others' folders alone.
        same_study = {k: v for k, v in old.items() if k != "seeds"} == {
            k: v for k, v in identity.items() if k != "seeds"
        }
        if not overwrite and not same_study:
            diff = ", ".join(
                f"{k}: {old.get(k)!r} here, {identity.get(k)!r} asked"
                for k in sorted(identity)
                if old.get(k) != identity.get(k)
            )
            raise UsageError(f"{workdir} holds another study ({diff}); use another --workdir or pass --overwrite")
    elif os.path.isdir(os.path.join(workdir, RUNS)) and not overwrite:
        raise UsageError(f"{workdir} has runs/ but no {STUDY_FILE}; use another --workdir or pass --overwrite")
    if overwrite:
        for name in OWN:
            p = os.path.join(workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    from advss_tf import workspace

    workspace.write_json(path, identity)


def read_identity(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, STUDY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path} not found: --workdir is not a study folder") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable: {e}") from None


def _file_name(run_id: str) -> str:
    return run_id.replace("/", "__")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the runner dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: a killed runner leaves its children to finish on their own


def start_subprocess(command: list[str], log_path: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The default way a run is started: `command` as a subprocess in a session of its own (environment `env`,
    default this one's), stdout and stderr appended to `log_path`, killed if the runner dies."""
    with open(log_path, "a", encoding="utf-8") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=env,
        )


def _cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def job_environment(jobs: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of each of `jobs` runs at once: the machine's cores shared out, as many TensorFlow threads
    per run as it has cores (unless the user set any of THREAD_VARIABLES: then theirs, untouched).

    K runs with TensorFlow's default, every core each, oversubscribe the machine: on a 2-core AMD EPYC two adversarial
    fine-tunings ran at 27 + 28 img/s with the default and 32 + 32 img/s with one thread each (one alone: 50 img/s;
    docs/benchmarks.md)."""
    env = dict(environ)
    if jobs > 1 and not any(v in environ for v in THREAD_VARIABLES):
        env.update(dict.fromkeys(THREAD_VARIABLES, str(max(1, _cores() // jobs))))
    return env


# What starts a run: (command line, log path) → a process handle with poll(), returncode and send_signal() (a
# subprocess.Popen by default; the tests pass one that forks the binaries from an interpreter that has already
# imported TensorFlow, tests/binaries.py).
StartRun = Callable[[list[str], str], Any]


def machine() -> dict[str, Any]:
    """What a run's time was measured on: the CPU model and the cores this process may use."""
    return {"cpu": cpu_model(), "cores": _cores()}


def record_attempt(workdir: str, entry: dict[str, Any]) -> None:
    """Appends one attempt to <workdir>/logs/times.jsonl (one line, one write: a kill leaves at most a torn last
    line, which the report skips)."""
    os.makedirs(os.path.join(workdir, LOGS), exist_ok=True)
    with open(os.path.join(workdir, LOGS, TIMES), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def _last_error(log_path: str) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.startswith("error: ")]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no error line"


def set_aside_remakes(workdir: str, runs: list[Run], say: Callable[[str], None]) -> dict[str, str]:
    """`plan.states` of `runs`, after moving each REMAKE run's results.json to results.kept.json so that it runs
    again (an evaluation made with other arguments than the plan's, or a run whose export a run to run needs and
    the folder does not hold); those runs are then TO_RUN."""
    planned = states(runs, workdir)
    for r in runs:
        if planned[r.id] == REMAKE:
            why = (
                "made with other arguments than the plan's"
                if r.made_otherwise(workdir)
                else "a run to run needs its export, which this folder does not hold"
            )
            os.replace(*(os.path.join(r.directory(workdir), f) for f in ("results.json", "results.kept.json")))
            say(f"re-make {r.id}: {why}")
            planned[r.id] = TO_RUN
    return planned


class Executor:
    """Runs `runs` (already in dependency order) with at most `jobs` at once; finished ones are skipped, and so
    are those not needed (`plan.states`: every run that needs them has finished).

    A run starts when every run it needs has finished (among those, by `plan.priority`: the longest weighted path
    to the end of the study first, then furthest down the pipeline, then heaviest); a failed run's dependants are
    skipped; one found finished when its turn comes (another process ran it) is not run again. Returns the exit
    status: 0 all finished, 1 a run failed (or was busy elsewhere), 128+signal when stopped by a signal.
    """

    def __init__(
        self,
        workdir: str,
        runs: list[Run],
        jobs: int = 1,
        say: Callable[[str], None] = print,
        start: StartRun = start_subprocess,
    ):
        self.workdir, self.runs, self.jobs, self.say, self.start = workdir, runs, jobs, say, start
        self.signum: int | None = None
        self.machine = machine()

    def _say(self, message: str) -> None:
        self.say(f"study: {message}")
        sys.stdout.flush()

    def _lock(self, run: Run):
        folder = os.path.join(self.workdir, LOCKS)
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, _file_name(run.id) + ".lock"), "w")  # noqa: SIM115 (held while the run runs)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        return f

    def _start(self, run: Run):
        os.makedirs(os.path.join(self.workdir, LOGS), exist_ok=True)
        log_path = os.path.join(self.workdir, LOGS, _file_name(run.id) + ".log")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(run.command())}\n")
        return self.start(run.command(), log_path), log_path

    def run(self) -> int:
        planned = set_aside_remakes(self.workdir, self.runs, self._say)
        state = {r.id: "todo" if planned[r.id] == TO_RUN else "done" for r in self.runs}
        todo = sum(s == "todo" for s in state.values())
        unneeded = sum(s == NOT_NEEDED for s in planned.values())
        self._say(
            f"{len(self.runs)} runs, {len(self.runs) - todo - unneeded} already finished, {todo} to run"
            + (f", {unneeded} not needed (every run that needs them has finished)" if unneeded else "")
        )
        running: dict[str, tuple[Any, Any, str, float]] = {}
        key = critical_path(self.runs)

        def forward(signum, frame):
            del frame
            self.signum = signum
            for proc, _, _, _ in running.values():
                if proc.poll() is None:
                    proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                for r in self.runs:
                    if state[r.id] == "todo" and any(state.get(d) in ("failed", "skipped", "busy") for d in r.deps):
                        state[r.id] = "skipped"
                        self._say(f"skip {r.id}: a run it needs did not finish")
                while self.signum is None and len(running) < self.jobs:
                    candidates = [
                        i
                        for i, r in enumerate(self.runs)
                        if state[r.id] == "todo" and all(state.get(d, "done") == "done" for d in r.deps)
                    ]
                    if not candidates:
                        break
                    ready = self.runs[min(candidates, key=lambda i: key(self.runs[i], i))]
                    lock = self._lock(ready)
                    if lock is None:
                        state[ready.id] = "busy"
                        self._say(f"skip {ready.id}: another process is running it")
                        continue
                    if ready.finished(self.workdir):  # another process (--only, a SLURM task) finished it meanwhile
                        lock.close()
                        state[ready.id] = "done"
                        self._say(f"{ready.id} was finished by another process")
                        continue
                    proc, log_path = self._start(ready)
                    state[ready.id] = "running"
                    running[ready.id] = (proc, lock, log_path, time.monotonic())
                    self._say(f"start {ready.id} (log: {log_path})")
                if not running:
                    break
                time.sleep(0.2)
                for rid, (proc, lock, log_path, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    lock.close()
                    del running[rid]
                    run = next(r for r in self.runs if r.id == rid)
                    seconds = time.monotonic() - t0
                    if proc.returncode == 0 and run.finished(self.workdir):
                        state[rid] = outcome = "done"
                        self._say(f"done {rid} in {seconds:.0f} s")
                    else:
                        state[rid] = "failed"
                        # stopped with the runner (the signal forwarded to it), or failed on its own
                        outcome = "failed" if self.signum is None else "stopped"
                        word = "FAILED" if outcome == "failed" else "stopped"
                        self._say(f"{word} {rid} (exit status {proc.returncode}): {_last_error(log_path)} ({log_path})")
                    ended = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                    entry = {"run": rid, "kind": run.kind, "seconds": round(seconds, 1), "outcome": outcome}
                    record_attempt(self.workdir, {**entry, **self.machine, "jobs": self.jobs, "ended": ended})
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if self.signum is not None:
            return 128 + self.signum
        return 0 if all(s == "done" for s in state.values()) else 1


def emit_slurm(
    workdir: str, runs: list[Run], base_command: list[str], options: list[str], write: Callable[[str], None]
) -> str:
    """Writes one SLURM array job per dependency level (task i runs `base_command --only=<run i>`) and submit.sh,
    which submits them in order, each `--dependency=afterok:` on the previous array. Returns submit.sh's path."""
    folder = os.path.join(workdir, SLURM)
    os.makedirs(folder, exist_ok=True)
    logs = os.path.join(os.path.abspath(workdir), LOGS)
    os.makedirs(logs, exist_ok=True)  # SLURM opens --output there before the task starts
    submit = [
        "#!/usr/bin/env bash",
        "# Submits the study's SLURM array jobs, each level after the previous one.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "dep=()",
    ]
    for k, level in enumerate(levels(runs)):
        if not level:
            continue
        ids = " ".join(shlex.quote(r.id) for r in level)
        script = [
            "#!/usr/bin/env bash",
            f"#SBATCH --job-name=study-level{k}",
            f"#SBATCH --array=0-{len(level) - 1}",
            f"#SBATCH --output={logs}/slurm-level{k}-%a.log",
            *(f"#SBATCH {o}" for o in options),
            "set -euo pipefail",
            f"RUNS=({ids})",
            f'exec {shlex.join(base_command)} --only="${{RUNS[$SLURM_ARRAY_TASK_ID]}}"',
            "",
        ]
        name = f"level{k}.sbatch"
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("\n".join(script))
        submit += [
            f'jid=$(sbatch --parsable "${{dep[@]}}" {name})',
            f'echo "level {k}: {len(level)} runs, job $jid"',
            'dep=(--dependency=afterok:"${jid%%;*}")',
        ]
    path = os.path.join(folder, "submit.sh")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(submit) + "\n")
    os.chmod(path, 0o755)
    write(f"study: SLURM array jobs in {folder}; submit them with: bash {path}")
    return path
