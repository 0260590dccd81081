"""A real redis-server for the tests and the bench: Debian's redis-server
on a free loopback port with its own directory, no persistence unless
asked, stopped by pid (never a system Redis, never by name)."""
import shutil
import signal
import subprocess
import time

from .nginx import free_port
from .proc import cpu_seconds

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class Redis:
    def __init__(self, d, port=None, args=(), tls=None, auth=None):
        self.dir = d
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.proc = None
        # (CA file, TLS port[, client cert, key]): redis-cli speaks TLS
        self.tls = tls
        # (user or None, password): what cli() authenticates with
        self.auth = auth

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self._wait_up("redis-server")

    def _wait_up(self, what):
        """Waits until it answers PING (NOAUTH too: up, and wants a
        password)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                out = self.cli("PING")
                if out.strip() == "PONG" or "NOAUTH" in out:
                    return self
            except subprocess.SubprocessError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{what} did not start on {self.port}")

    def kill(self):
        """SIGKILL: what it held in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args, password=None):
        cmd = [REDIS_CLI, "-p", str(self.port)]
        if self.tls:
            cmd = [REDIS_CLI, "-p", str(self.tls[1]), "--tls", "--cacert",
                   str(self.tls[0])]
            if len(self.tls) > 2:
                cmd += ["--cert", str(self.tls[2]), "--key", str(self.tls[3])]
        if password:
            cmd += ["--no-auth-warning", "-a", password]
        elif self.auth:
            user, pw = self.auth
            cmd += ["--no-auth-warning", "-a", pw]
            if user:
                cmd += ["--user", user]
        p = subprocess.run(cmd + list(args), capture_output=True, text=True,
                           timeout=10)
        return p.stdout

    def cpu(self):
        """CPU seconds (user + sys) the server has used so far."""
        c = cpu_seconds([self.proc.pid])
        return c["user"] + c["sys"]

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class Sentinel(Redis):
    """A Redis Sentinel (Debian's redis-server --sentinel) watching the
    primary on master_port as `name`; its config file, which Sentinel
    rewrites, lives in its own directory."""

    def __init__(self, d, master_port, name="mymaster", quorum=2,
                 down_ms=1000, failover_ms=3000, port=None, auth=None,
                 master_pass=None, hostnames=False):
        # auth: (user or None, password) the sentinel wants (requirepass,
        # or an ACL user), which the sentinels use among themselves too;
        # master_pass: the data nodes' password.
        super().__init__(d, port=port, auth=auth)
        self.master_port = master_port
        self.name = name
        self.quorum = quorum
        self.down_ms = down_ms
        self.failover_ms = failover_ms
        self.master_pass = master_pass
        # Monitor the primary as "localhost" and announce nodes by name
        # (resolve-hostnames, announce-hostnames).
        self.hostnames = hostnames

    def _auth_conf(self, master_pass):
        conf = ""
        if master_pass:
            conf += f"sentinel auth-pass {self.name} {master_pass}\n"
        if self.auth:
            user, pw = self.auth
            if user:
                conf += (f"user {user} on >{pw} ~* &* +@all\n"
                         f"user default off\n"
                         f"sentinel sentinel-user {user}\n")
            else:
                conf += f"requirepass {pw}\n"
            conf += f"sentinel sentinel-pass {pw}\n"
        return conf

    def start(self):
        conf = self.dir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\n"
                f"dir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n" +
                ("sentinel resolve-hostnames yes\n"
                 "sentinel announce-hostnames yes\n" if self.hostnames
                 else "") +
                f"sentinel monitor {self.name} "
                f"{'localhost' if self.hostnames else '127.0.0.1'} "
                f"{self.master_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.name} "
                f"{self.down_ms}\n"
                f"sentinel failover-timeout {self.name} {self.failover_ms}\n"
                f"sentinel parallel-syncs {self.name} 1\n" +
                self._auth_conf(self.master_pass))
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self._wait_up("redis sentinel")

    def master(self):
        """SENTINEL master NAME as a dict."""
        f = self.cli("SENTINEL", "master", self.name).split("\n")
        return dict(zip(f[0::2], f[1::2]))
