"""prometheus_client's multiprocess documentation examples, verbatim, and a driver for them.

EXAMPLES holds the three snippets of https://prometheus.github.io/client_python/multiprocess/
exactly as published (the app exposing metrics, the gunicorn config's
child_exit hook, the livesum gauge). ``python docs_examples.py MODE DIR``
writes them to DIR as modules, listens on a loopback port (as a server's
master does before forking workers), makes the setup step of MODE (``mpc``:
the PROMETHEUS_MULTIPROC_DIR environment variable the documentation asks
for; ``shm``: the one line ``prometheus_shm.install()``, whose segment is
then found from that socket), forks workers that use the metrics as an app
would, calls the config's child_exit for each worker that ended (as
gunicorn does), and prints the body the documented app serves, with the
PIDs of the processes (JSON).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from types import SimpleNamespace

EXAMPLES = {
    "doc_app": """from prometheus_client import multiprocess
from prometheus_client import generate_latest, CollectorRegistry, CONTENT_TYPE_LATEST, Counter

MY_COUNTER = Counter('my_counter', 'Description of my counter')

# Expose metrics.
def app(environ, start_response):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    data = generate_latest(registry)
    status = '200 OK'
    response_headers = [
        ('Content-type', CONTENT_TYPE_LATEST),
        ('Content-Length', str(len(data)))
    ]
    start_response(status, response_headers)
    return iter([data])
""",
    "doc_gunicorn_conf": """from prometheus_client import multiprocess

def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
""",
    "doc_gauge": """from prometheus_client import Gauge

# Example gauge
IN_PROGRESS = Gauge("inprogress_requests", "help", multiprocess_mode='livesum')
""",
}


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    for name, text in EXAMPLES.items():
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(text)
    sys.path.insert(0, directory)
    listener = socket.create_server(("127.0.0.1", 0))
    if mode == "mpc":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(directory, "multiproc")
        os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    else:
        import prometheus_shm

        prometheus_shm.install()  # the setup line
    import doc_app
    import doc_gauge
    import doc_gunicorn_conf

    pids = [os.getpid()]
    holders = []
    for i, end in enumerate(["exit", "exit", "kill", "hold", "exit"]):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            for _ in range(i + 1):
                doc_app.MY_COUNTER.inc()
                with doc_gauge.IN_PROGRESS.track_inprogress():
                    pass
            doc_gauge.IN_PROGRESS.inc()  # a request in flight
            if end == "exit":
                doc_gauge.IN_PROGRESS.dec()
            os.write(w, b"x")
            if end != "exit":
                signal.pause()
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        pids.append(pid)
        if end == "kill":
            os.kill(pid, signal.SIGKILL)
        if end in ("exit", "kill"):
            os.waitpid(pid, 0)
            doc_gunicorn_conf.child_exit(None, SimpleNamespace(pid=pid))
        else:
            holders.append(pid)
    status: list[str] = []
    body = b"".join(doc_app.app({}, lambda s, h: status.append(s)))
    for pid in holders:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    listener.close()
    json.dump({"status": status, "exposition": body.decode(), "pids": pids}, sys.stdout)


if __name__ == "__main__":
    main()
