"""`vethtrace agent`'s HTTP server: one node's discovery, checks and events (see
vethtrace/agent/__init__.py for the endpoints).

Why these rules:
- Read-only. Nothing here changes the node: discovery and checks read netlink,
  events attach probes for the length of one request and detach when it ends
  (the client went away, the duration passed, or the agent is stopping). The
  one thing it sends is what `ping` needs from a node: ICMP echo requests from
  a namespace in the scope (few, bounded; `--no-ping` turns even that off).
- Authenticated before anything: a request without the right bearer token gets
  401 and no byte of the node's data; the compare is constant-time
  (hmac.compare_digest), so timing does not leak the token.
- Scoped: with -n, only those namespaces are served (their veths' far ends in
  other namespaces are left out: for this node they are the outside), events
  from other namespaces are filtered in the kernel, pings leave only from them.
- Stoppable: `stopping` ends every stream within a poll (0.1 s); the server
  joins its request threads on close, so every collector is closed (detached)
  before the process exits.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import queue
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vethtrace import __version__
from vethtrace.agent import API
from vethtrace.errors import UserError
from vethtrace.model import Topology

ALIVE_S = 1.0  # a stream says it is alive this often (and learns when its client left)
MAX_DURATION_S = 3600.0
MAX_PING_COUNT = 20
MAX_PING_TIMEOUT_S = 60.0
MAX_BODY = 4096


class Agent:
    """What the server serves: the node's label, its scope and its token."""

    def __init__(
        self, node: str, token: str, scope: list[str] | None, allow_ping: bool = True
    ) -> None:
        self.node, self.scope, self.allow_ping = node, scope, allow_ping
        self._expected = f"Bearer {token}".encode()
        self.stopping = threading.Event()

    def authorised(self, header: str | None) -> bool:
        return hmac.compare_digest((header or "").encode(), self._expected)

    def topology(self) -> Topology:
        from vethtrace.topology import discover

        topo = discover(self.scope)
        if self.scope:
            full = {ns.inode for ns in topo.namespaces if not ns.partial}
            topo.namespaces = [ns for ns in topo.namespaces if ns.inode in full]
        return topo

    def inodes(self) -> list[int] | None:
        from vethtrace import netns

        return [netns.inode_of(n) for n in self.scope] if self.scope else None

    def in_scope(self, name: str) -> bool:
        from vethtrace import netns

        return netns.exists(name) and (not self.scope or name in self.scope)


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every request thread: nothing stays attached

    def __init__(self, address: tuple[str, int], agent: Agent, family: int) -> None:
        self.address_family = family
        self.agent = agent
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer's would ask DNS for our own name (getfqdn): slow or hanging
        # on a node without a resolver, and nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = f"vethtrace-agent/{__version__}"
    protocol_version = "HTTP/1.0"  # a stream ends when the connection does

    # --- plumbing ------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        print(f"vethtrace agent: {self.client_address[0]} {format % args}", file=sys.stderr)

    def _json(self, status: int, obj: Any) -> None:
        body = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="vethtrace"')
        self.end_headers()
        self.wfile.write(body)

    def _body_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        agent = self.server.agent
        if not agent.authorised(self.headers.get("Authorization")):
            self._json(401, {"error": "unauthorized: send Authorization: Bearer TOKEN"})
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes = {
            ("GET", f"{API}/info"): self._info,
            ("GET", f"{API}/topo"): self._topo,
            ("GET", f"{API}/check"): self._check,
            ("GET", f"{API}/events"): self._events,
            ("POST", f"{API}/ping"): self._ping,
        }
        handler = routes.get((method, url.path))
        if handler is None:
            known = any(path == url.path for _m, path in routes)
            self._json(405 if known else 404, {"error": f"no {method} {url.path}"})
            return
        try:
            handler(query)
        except UserError as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionError):
            pass  # the client left; whatever was attached is closed by now

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    # --- endpoints ---------------------------------------------------------------

    def _info(self, _q: dict[str, str]) -> None:
        a = self.server.agent
        self._json(200, {"node": a.node, "version": __version__, "scope": a.scope,
                         "ping": a.allow_ping})  # fmt: skip

    def _topo(self, _q: dict[str, str]) -> None:
        from vethtrace.topology import snapshot

        self._body_text(200, snapshot.dumps(self.server.agent.topology(), indent=None) + "\n")

    def _check(self, _q: dict[str, str]) -> None:
        from vethtrace.diagnose.check import run_rules
        from vethtrace.render.findings import findings_json

        topo = self.server.agent.topology()
        names = [ns.name for ns in topo.namespaces]
        self._json(200, findings_json(run_rules(topo, names)))

    def _events(self, q: dict[str, str]) -> None:
        from vethtrace.collect.bpf import AREAS, BpfCollector
        from vethtrace.collect.runcfg import vxlan_ports_of
        from vethtrace.render.trace import NetnsNames, json_line

        agent = self.server.agent
        duration = _number(q.get("duration", "60"), "duration", 0, MAX_DURATION_S)
        areas = tuple(a for a in q.get("areas", ",".join(AREAS)).split(",") if a)
        functions = q.get("functions", "1") != "0"
        # a bad filter or area fails here, before the 200: one 400 line says why
        ports = vxlan_ports_of(agent.topology())  # the node's VXLAN devices' ports, decoded too
        coll = BpfCollector(q.get("filter", ""), agent.inodes(), areas=areas, functions=functions,
                            vxlan_ports=ports)  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.wfile.flush()
        sent = 0
        with coll:
            try:
                plan = coll.start()
            except Exception as exc:  # said in the stream: the headers are gone
                self._line({"type": "error", "error": f"{type(exc).__name__}: {exc}"})
                return
            self._line({"type": "ready", "node": agent.node, "plan": plan.one_line()})
            names = NetnsNames()
            deadline = time.monotonic() + duration
            alive = time.monotonic() + ALIVE_S
            while not agent.stopping.is_set() and time.monotonic() < deadline:
                events = coll.poll(100)
                for ev in events:
                    self.wfile.write((json_line(ev, names) + "\n").encode())
                sent += len(events)
                if time.monotonic() >= alive:
                    self._line({"type": "alive", "events": sent})
                    alive = time.monotonic() + ALIVE_S
                elif events:
                    self.wfile.flush()
            for ev in coll.drain():
                self.wfile.write((json_line(ev, names) + "\n").encode())
                sent += 1
            why = "agent stopping" if agent.stopping.is_set() else "duration"
            self._line({"type": "end", "events": sent, "lost": coll.lost, "why": why})

    def _line(self, obj: dict[str, Any]) -> None:
        self.wfile.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        self.wfile.flush()

    def _ping(self, _q: dict[str, str]) -> None:
        from vethtrace import netns
        from vethtrace.collect.pinger import Pinger
        from vethtrace.model import to_dict

        agent = self.server.agent
        if not agent.allow_ping:
            self._json(403, {"error": f"the agent on {agent.node} runs with --no-ping"})
            return
        req = self._read_json()
        source, ip = str(req.get("from", "")), _unicast(req.get("ip"))
        if not agent.in_scope(source):
            raise UserError(f"{source!r} is not a namespace this agent serves")
        count = int(_number(req.get("count", 3), "count", 1, MAX_PING_COUNT))
        size = int(_number(req.get("size", 56), "size", -1, 65507))
        timeout = _number(req.get("timeout", 5), "timeout", 0, MAX_PING_TIMEOUT_S)
        got: queue.Queue[Any] = queue.Queue()
        events: list[Any] = []
        pinger = Pinger(source, ip, count, got.put, netns.inode_of(source), size)
        pinger.start()
        try:
            deadline = time.monotonic() + timeout
            replies: set[int] = set()
            while time.monotonic() < deadline and len(replies) < count:
                if agent.stopping.is_set():
                    break
                try:
                    ev = got.get(timeout=0.05)
                except queue.Empty:
                    continue
                events.append(ev)
                if ev.point == "ping-reply":
                    replies.add(int(ev.extra.get("seq", 0)))
        finally:
            pinger.stop()
        while not got.empty():
            events.append(got.get_nowait())
        sent = sum(1 for e in events if e.point == "ping-send")
        doc = {"node": agent.node, "from": source, "ip": ip, "sent": sent,
               "replies": len(replies), "events": [to_dict(e) for e in events]}  # fmt: skip
        self._json(200, doc)

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise UserError("Content-Length is not a number") from None
        if not 0 < length <= MAX_BODY:
            raise UserError(f"send a JSON object of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            raise UserError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise UserError("the body must be a JSON object")
        return body


def _number(value: Any, what: str, low: float, high: float) -> float:
    """A finite number in (low, high]; UserError (400) otherwise."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: {value!r} is not a number") from None
    if not low < x <= high:  # also false for nan
        raise UserError(f"{what}: {value!r} is out of range (more than {low:g}, at most {high:g})")
    return x


def _unicast(value: Any) -> str:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise UserError(f"ip: {value!r} is not an IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or int(addr) == 2**32 - 1:
        raise UserError(f"ip: {addr} is not a unicast address")
    return str(addr)
