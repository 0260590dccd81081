"""Process and socket figures from /proc: children of a master, whether a
pid is alive, RSS/PSS, CPU seconds, which process holds which TCP
connection."""

import os
import subprocess


def end_process(proc, timeout=5):
    """SIGTERM to a child (subprocess.Popen), SIGKILL if it has not ended
    within `timeout` s; False if SIGKILL was needed."""
    if proc is None or proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def proc_children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return sorted(out)


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tcp_sockets():
    """(local port, remote port, state, inode) of every TCP socket."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    yield (int(cols[1].rsplit(":", 1)[1], 16),
                           int(cols[2].rsplit(":", 1)[1], 16),
                           cols[3], int(cols[9]))
        except OSError:
            pass


def established_inodes(port):
    """Socket inodes of established TCP connections whose local port is
    `port` (the server side of connections to it)."""
    return {inode for lport, _, state, inode in _tcp_sockets()
            if lport == port and state == "01"}


def server_side_inode(server_port, client_port):
    """Inode of the server side of the connection from client_port."""
    for lport, rport, _, inode in _tcp_sockets():
        if lport == server_port and rport == client_port:
            return inode
    return None


def socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def proc_kb(pid, path, key):
    """A "Key:  N kB" figure of /proc/PID/PATH (status, smaps_rollup); 0 if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    return proc_kb(pid, "smaps_rollup", "Pss:")


def cpu_seconds(pids):
    """CPU seconds {"user", "sys"} used so far by the processes."""
    tick = os.sysconf("SC_CLK_TCK")
    u = s = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        u += int(st[11])
        s += int(st[12])
    return {"user": u / tick, "sys": s / tick}


def conns_per_process(pids, port):
    """Established connections to local port `port`, per process."""
    est = established_inodes(port)
    return [len(socket_inodes(p) & est) for p in pids]


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def peer_socket_option(pid, inode, level, option, buflen=None):
    """getsockopt() on the socket `inode` held by process `pid`, through a
    duplicate of its descriptor (pidfd_getfd, Linux 5.6+, needs the right
    to ptrace pid). The option's int value, or with buflen its bytes."""
    import ctypes
    import socket
    fdnum = None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                fdnum = int(fd)
                break
        except OSError:
            continue
    if fdnum is None:
        raise LookupError(f"process {pid} holds no socket {inode}")
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_pidfd_getfd = 438
        dup = libc.syscall(SYS_pidfd_getfd, pidfd, fdnum, 0)
        if dup < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"pidfd_getfd: {os.strerror(e)}")
    finally:
        os.close(pidfd)
    s = socket.socket(fileno=dup)
    try:
        if buflen is not None:
            return s.getsockopt(level, option, buflen)
        return s.getsockopt(level, option)
    finally:
        s.detach()
        os.close(dup)
