"""A health endpoint that knows about the workers: GET /health on a small stdlib HTTP server.

Streamlit's own `/_stcore/health` answers "ok" as long as the web server runs, even when every job
worker is dead. This server reports what a lab admin (or a monitor) needs instead:

    {"status": "ok" | "degraded",
     "workers": {"cpu": {"pid": 123, "alive": true, "job": "3f2a9c1e0b7d", "restarts": 0}},
     "queue": {"cpu": 2},
     "uptime_s": 5321.4}

`status` is "degraded" (HTTP 503) while a device's worker is not alive; the supervisor restarts it
within seconds. It runs on a daemon thread of the server process, one per process, started when
`CZB_HEALTH_PORT` is set and bound to `CZB_HEALTH_HOST` (default 127.0.0.1: only the machine itself,
or a reverse proxy, can ask).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, cast

import psutil

from czb_core.config import get_settings
from czb_core.service.jobs import JobManager
from czb_core.service.jobs.store import QUEUED, RUNNING

log = logging.getLogger(__name__)
HEALTH_PATH = "/health"
DEFAULT_HOST = "127.0.0.1"


def worker_state(manager: JobManager) -> dict[str, dict]:
    """Per device: the worker's pid, whether it is alive, and the id of the job it runs (None when idle).

    Worker processes report through the supervisor; thread workers (`processes=False`) are the
    server's own pid.
    """
    running: dict[str, str] = {}
    for job in manager.store.list(statuses=(RUNNING,)):  # newest first: keep the oldest per device
        running[job.device] = job.id
    if manager.supervisor is not None:
        state = {device: dict(info) for device, info in manager.supervisor.state().items()}
    else:
        threads = {t.name.removeprefix("czb-worker-"): t for t in manager._threads}
        state = {device: {"pid": os.getpid(), "alive": device in threads and threads[device].is_alive()}
                 for device in manager.devices}
    for device, info in state.items():
        info["job"] = running.get(device)
    return state


def queue_lengths(manager: JobManager) -> dict[str, int]:
    """Queued jobs per device (every device of the manager is listed, idle ones with 0)."""
    counts = dict.fromkeys(manager.devices, 0)
    for job in manager.store.list(statuses=(QUEUED,)):
        counts[job.device] = counts.get(job.device, 0) + 1
    return counts


def process_uptime_s() -> float:
    return round(time.time() - psutil.Process().create_time(), 1)


def health_report(manager: JobManager) -> dict:
    """The /health document of `manager`."""
    workers = worker_state(manager)
    return {
        "status": "ok" if workers and all(w["alive"] for w in workers.values()) else "degraded",
        "workers": workers,
        "queue": queue_lengths(manager),
        "uptime_s": process_uptime_s(),
    }


class _HealthHandler(BaseHTTPRequestHandler):
    server: "HealthServer"

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._reply(404, {"error": f"not found; ask GET {HEALTH_PATH}"})
            return
        try:
            report = health_report(self.server.manager)
        except Exception as exc:  # a locked or missing database must still give an answer
            log.exception("health report failed")
            self._reply(503, {"status": "error", "error": str(exc)})
            return
        self._reply(200 if report["status"] == "ok" else 503, report)

    def _reply(self, code: int, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # a monitor polling every few seconds floods stderr
        log.debug("health: " + format, *args)


class HealthServer(ThreadingHTTPServer):
    """Answers GET /health about `manager` on a daemon thread; `manager` may be swapped while it runs."""

    daemon_threads = True

    def __init__(self, manager: JobManager, host: str = DEFAULT_HOST, port: int = 0):
        super().__init__((host, port), _HealthHandler)
        self.manager = manager
        self.thread = threading.Thread(target=self.serve_forever, name="czb-health", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self.server_address[:2])  # an IP address: text
        return f"http://{host}:{port}{HEALTH_PATH}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def health_address() -> Optional[tuple[str, int]]:
    """(host, port) from CZB_HEALTH_HOST / CZB_HEALTH_PORT; None when no port is set (no endpoint)."""
    settings = get_settings()
    return None if settings.health_port is None else (settings.health_host, settings.health_port)


_process_server: Optional[HealthServer] = None
_process_lock = threading.Lock()


def serve_health(manager: JobManager) -> Optional[HealthServer]:
    """Start this process's health server once (when CZB_HEALTH_PORT is set) and report on `manager`.

    A later call (a new manager after a cache clear) only points the running server at the new manager.
    A port already in use is logged and leaves the app running without the endpoint.
    """
    global _process_server
    with _process_lock:
        if _process_server is not None:
            _process_server.manager = manager
            return _process_server
        address = health_address()
        if address is None:
            return None
        try:
            _process_server = HealthServer(manager, *address)
        except OSError as exc:
            log.error("health endpoint not started: cannot listen on %s:%s (%s)", *address, exc)
            return None
        log.info("health endpoint at %s", _process_server.url)
        return _process_server
