"""Starting and stopping nginx for the tests and the bench: free ports, the
environment of a sanitizer build, the master and its workers by pid (never
by name), error.log checks."""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from .proc import (cpu_seconds, proc_alive, proc_children, proc_cmdline,
                   proc_kb)

ROOT = Path(__file__).resolve().parent.parent.parent
MODULE = Path(os.environ.get("SSE_MODULE")
              or ROOT / "build" / "ngx_http_sse_module.so")
# Another nginx with the module built for it (make matrix).
NGINX_BIN = os.environ.get("SSE_NGINX_BIN") or "/usr/sbin/nginx"

BAD_LOG = re.compile(
    r"\[(alert|emerg|crit)\]|AddressSanitizer|runtime error|LeakSanitizer")

# ---- sanitizer builds (`make test-asan`)
# SSE_MODULE names the module to load (build-asan/'s, built with ASan and
# UBSan) and SSE_PRELOAD the sanitizer runtime, which must come first in
# nginx's process: it goes into LD_PRELOAD of nginx only, never of python
# or node. ASan writes its reports to DIR/sanitizer.PID (log_path); gcc's
# UBSan ignores log_path and writes to stderr, which is error.log once nginx
# runs and the output of the nginx command before that. A report in any of
# the three fails the test.
SANITIZER_LOG = "sanitizer"
SANITIZER_REPORT = re.compile(r"AddressSanitizer|runtime error|LeakSanitizer")


def nginx_env(d):
    """The environment to start nginx with, its prefix directory being d."""
    env = dict(os.environ)
    preload = os.environ.get("SSE_PRELOAD")
    if preload:
        env["LD_PRELOAD"] = preload
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            env[var] = ":".join(filter(None, (
                env.get(var), f"log_path={d}/{SANITIZER_LOG}")))
    return env


def sanitizer_reports(d, output=""):
    """The first lines of every sanitizer report nginx wrote into d, and the
    lines of a report in `output` (what the nginx command printed)."""
    out = [ln for ln in output.splitlines() if SANITIZER_REPORT.search(ln)]
    for f in sorted(Path(d).glob(f"{SANITIZER_LOG}.*")):
        text = f.read_text(errors="replace").strip()
        if text:
            out.append(f"{f}:")
            out += text.splitlines()[:30]
    return out


_HANDED_PORTS = set()


def free_port():
    """A free 127.0.0.1 port, never one this process handed out before (the
    kernel may offer a just-closed port again, and two servers of one
    config on one port would merge)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_PORTS:
            _HANDED_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port")


def free_ports(n):
    """n distinct free ports."""
    return [free_port() for _ in range(n)]


def wait_port(port, deadline):
    """True once 127.0.0.1:port accepts, False at the monotonic deadline."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.01)
    return False


class PortTaken(RuntimeError):
    """nginx could not bind: someone took the free port first."""


class NginxProcess:
    """One nginx (master + workers, daemon on) with its prefix in `d`:
    d/nginx.conf, d/error.log, d/nginx.pid. Subclasses write the config;
    start() launches it and waits until `ports` accept and `nworkers`
    workers run; stop() ends it by pid."""

    def __init__(self, d, nworkers=2, nginx_bin=None, env=None):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = self.dir  # nginx -p: where relative paths start
        self.conf = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.nworkers = nworkers
        self.nginx_bin = nginx_bin or NGINX_BIN
        self.env = env  # None: nginx_env(d)
        self.master = None
        self.output = ""  # what the nginx command printed

    def run(self, *args):
        """The nginx command on this prefix and config, with `args` (none:
        start it; -t: test the config)."""
        return subprocess.run(
            [self.nginx_bin, "-p", f"{self.prefix}/", "-c", str(self.conf),
             "-e", str(self.error_log), *args],
            capture_output=True, text=True, timeout=30,
            env=self.env if self.env is not None else nginx_env(self.dir))

    def launch(self, ports, timeout=10):
        p = self.run()
        self.output = p.stdout + p.stderr
        if p.returncode != 0:
            # A free port can be taken by someone else before nginx binds.
            cls = PortTaken if "Address already in use" in p.stderr + \
                self.log_text() else RuntimeError
            raise cls(f"nginx failed to start: {p.stderr}\n"
                      f"{self.log_text()}")
        deadline = time.monotonic() + timeout
        pid_file = self.dir / "nginx.pid"
        while time.monotonic() < deadline:
            try:
                self.master = int(pid_file.read_text().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        if self.master is None:
            raise RuntimeError("nginx wrote no pid file")
        for port in ports:
            if not wait_port(port, deadline):
                raise RuntimeError(f"port {port} never accepted")
        self.wait_workers(max(0.1, deadline - time.monotonic()))
        return self

    def workers(self):
        """Pids of the current (not shutting down) worker processes."""
        return [p for p in proc_children(self.master)
                if proc_cmdline(p) == "nginx: worker process"]

    def pids(self):
        """The master and all its children."""
        return [self.master] + proc_children(self.master)

    def wait_workers(self, timeout=10, exclude=()):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = [p for p in self.workers() if p not in exclude]
            if len(w) == self.nworkers:
                return w
            time.sleep(0.02)
        raise RuntimeError(f"workers did not start: {self.workers()}")

    def stop(self, timeout=10):
        """Graceful stop (SIGQUIT to the master); returns False if SIGKILL
        was needed."""
        if self.master is None or not proc_alive(self.master):
            return True
        procs = self.pids()
        os.kill(self.master, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(proc_alive(p) for p in procs):
                return True
            time.sleep(0.01)
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return False

    def log_text(self):
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def cpu(self):
        """CPU seconds (user, sys) used so far by master and workers."""
        return cpu_seconds(self.pids())

    def rss_pss_kb(self):
        """(RSS, PSS) in kB summed over master and workers."""
        pids = self.pids()
        return (sum(proc_kb(p, "status", "VmRSS:") for p in pids),
                sum(proc_kb(p, "smaps_rollup", "Pss:") for p in pids))
