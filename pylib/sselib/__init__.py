"""Shared by t/ (the integration tests) and bench/run.py: starting nginx
(sselib.nginx), process figures from /proc (sselib.proc) and the SSE/HTTP
client (sselib.client). Import it after putting pylib/ on sys.path:

    sys.path.insert(0, str(ROOT / "pylib"))
    from sselib.nginx import NginxProcess
"""
