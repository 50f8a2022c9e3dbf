"""Worker processes for the side-by-side benchmarks: one framework (or variant) per process, so that each one's
threads and peak memory are its own, spoken to one line at a time by the coordinator that takes the rounds.

Shared by benchmark_vs_torch.py and benchmark_acl_step.py (not part of the library). A worker prints the lines meant
for the coordinator with `reply` (prefixed, so that library logging on stdout is ignored); the coordinator reads them
with `Worker.read` and asks for a timing with `Worker.time`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

_PROTOCOL = "@@bench "  # worker lines meant for the coordinator start with this; anything else is ignored


# -- memory -------------------------------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS counter (VmHWM) of this process, so each timing gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: the peak then covers everything so far


def _status_gib(field: str) -> float | None:
    """A memory line of /proc/self/status in GiB (None where there is none: not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def peak_rss_gib() -> float:
    """Peak resident memory of this process since the last `reset_peak_rss` (Linux) or since start."""
    peak = _status_gib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float | None:
    """Resident memory of this process now (Linux; None elsewhere): what an idle worker keeps between its calls."""
    return _status_gib("VmRSS")


# -- the worker's side --------------------------------------------------------------------------------------------
def reply(obj: dict) -> None:
    """Sends one JSON object to the coordinator."""
    sys.stdout.write(_PROTOCOL + json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the coordinator's side ---------------------------------------------------------------------------------------
class Worker:
    """A worker process of one variant (`script --worker=<variant> --workdir=<workdir> *argv`), stderr to a log."""

    def __init__(self, variant: str, script: str, workdir: str, argv: list[str]):
        self.variant = variant
        self.log_path = os.path.join(workdir, f"{variant}.log")
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, script, f"--worker={variant}", f"--workdir={workdir}", *argv]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)

    def read(self) -> dict:
        """The worker's next reply; RuntimeError with the tail of its log if it exited instead."""
        for line in self.proc.stdout:
            if line.startswith(_PROTOCOL):
                return json.loads(line[len(_PROTOCOL) :])
        self._log.flush()
        with open(self.log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"worker {self.variant} exited (status {self.proc.wait()}):\n{tail}")

    def time(self, part: str) -> dict:
        """Asks for one timed call of `part`; returns the worker's reply."""
        self.proc.stdin.write(part + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self._log.close()


def summary(values: list[float]) -> dict:
    """Median and spread of one part's per-round seconds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_json(path: str, obj: dict) -> None:
    """Writes one JSON line to `path` atomically (a run cut short leaves the last complete file)."""
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(obj) + "\n")
    os.replace(path + ".tmp", path)
