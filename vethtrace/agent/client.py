"""Asking an agent (http.client): its info, topology and checks as JSON, its
events as a stream read in a thread, and echo requests from one of its
namespaces. Every failure (refused, timed out, wrong token, a stream that ends
before it says "end") is an AgentError with one line saying why, so the
caller can say which node could not be asked instead of raising.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from vethtrace.agent import API
from vethtrace.errors import UserError
from vethtrace.model import ID_FIELDS, ProbeEvent, from_dict

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # a topology of a big node, a ping of --timeout
STREAM_TIMEOUT_S = 180.0  # compiling the probes on a busy node; then `alive` every second


class AgentError(Exception):
    """This agent could not be asked; str() is the reason, one line."""


def parse_url(text: str) -> tuple[str, str, int]:
    """'http://HOST:PORT' (or https) -> (scheme, host, port); UserError otherwise."""
    u = urlsplit(text if "://" in text else f"http://{text}")
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
        raise UserError(f"--agents: {text!r} is not an agent's URL (http://HOST:PORT)")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise UserError(f"--agents: {text!r} has a bad port") from None
    return u.scheme, u.hostname, port


class AgentClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.scheme, self.host, self.port = parse_url(url)
        self._auth = {"Authorization": f"Bearer {token}"}

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _open(
        self, method: str, path: str, body: bytes | None = None, timeout: float = READ_TIMEOUT_S
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(CONNECT_TIMEOUT_S)
        headers = dict(self._auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise AgentError(_why(exc)) from None
        if resp.status != 200:
            try:
                detail = json.loads(resp.read(4096) or b"{}").get("error", "")
            except (ValueError, OSError, AttributeError):
                detail = ""
            conn.close()
            what = "the token was refused" if resp.status == 401 else f"HTTP {resp.status}"
            raise AgentError(f"{what}{': ' + detail if detail and resp.status != 401 else ''}")
        return conn, resp

    def get(self, what: str) -> Any:
        """GET /v1/<what> as JSON."""
        conn, resp = self._open("GET", f"{API}/{what}")
        try:
            return json.loads(resp.read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            why = f"its answer to /{what} was cut short or not JSON ({_why(exc)})"
            raise AgentError(why) from None
        finally:
            conn.close()

    def ping(self, source: str, ip: str, count: int, size: int, timeout: float) -> Any:
        body = json.dumps(
            {"from": source, "ip": ip, "count": count, "size": size, "timeout": timeout}
        ).encode()
        conn, resp = self._open("POST", f"{API}/ping", body, timeout + READ_TIMEOUT_S)
        try:
            return json.loads(resp.read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise AgentError(f"its answer to the ping was cut short ({_why(exc)})") from None
        finally:
            conn.close()

    def events(self, filter_text: str, duration: float, areas: str = "") -> EventStream:
        query = {"filter": filter_text, "duration": f"{duration:g}"}
        if areas:
            query.update(areas=areas, functions="0")
        return EventStream(self, f"{API}/events?{urlencode(query)}")


class EventStream:
    """One /v1/events request read in a thread: `ready` is set once the node's
    probes are attached (or the stream failed), `events` grows as lines arrive,
    `error` says why it failed or ended early."""

    def __init__(self, client: AgentClient, path: str) -> None:
        self.client, self.path = client, path
        self.ready = threading.Event()
        self.events: list[ProbeEvent] = []
        self.error: str | None = None
        self.ended = False  # the agent said "end"
        self._conn: http.client.HTTPConnection | None = None
        self._closing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="agent-events", daemon=True)

    def start(self) -> EventStream:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._conn, resp = self.client._open("GET", self.path, timeout=STREAM_TIMEOUT_S)
            for raw in resp:
                self._line(json.loads(raw))
                if self.ended:
                    break
            if not self.ended and not self._closing:
                self.error = self.error or "its event stream ended before the ping did"
        except AgentError as exc:
            self.error = str(exc)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if not self._closing:
                self.error = f"its event stream broke ({_why(exc)})"
        finally:
            self.ready.set()

    def _line(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "ready":
            self.ready.set()
        elif kind == "end":
            self.ended = True
        elif kind == "error":
            self.error = f"its probes failed: {obj.get('error')}"
            self.ready.set()
        elif kind is None:
            for key in ID_FIELDS:
                if isinstance(obj.get(key), str):
                    obj[key] = int(obj[key], 16)
            with self._lock:
                self.events.append(from_dict(ProbeEvent, obj))

    def take(self) -> list[ProbeEvent]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        """Hang up: the agent sees it at its next line and detaches its probes."""
        self._closing = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        if conn is not None:
            conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
