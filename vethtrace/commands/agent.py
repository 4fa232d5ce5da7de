"""`vethtrace agent --listen ADDR:PORT --token-file F [-n NETNS ...] [--node NAME]`:
serve this node's discovery, checks and events over HTTP (vethtrace/agent/).

The wiring and the input checks: where to listen (only where told; every
address only when --listen says 0.0.0.0 or [::] itself), the token (a file,
so it is in no process listing), the scope (-n: those namespaces; none: the
whole node). Runs until SIGINT/SIGTERM, then stops every stream and exits
130/143 with nothing attached.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from vethtrace.errors import UserError, require_root

MIN_TOKEN = 16


def parse_listen(text: str) -> tuple[str, int, int]:
    """'ADDR:PORT' or '[V6]:PORT' -> (address, port, family)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UserError(
            f"--listen {text!r}: give ADDR:PORT (e.g. 10.0.0.5:7411; 0.0.0.0:7411 for every "
            "address, said explicitly)"
        )
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"--listen {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UserError(f"--listen {text!r}: the port must be 1-65535")
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return str(addr), int(port_text), family


def read_token(path: str) -> str:
    """The bearer token: the file's content without surrounding whitespace."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise UserError(f"--token-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"--token-file {path}: not UTF-8 text") from None
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token) or not token.isprintable():
        raise UserError(
            f"--token-file {path}: the token must be one word of at least {MIN_TOKEN} printable "
            "characters (e.g. `openssl rand -hex 32`)"
        )
    return token


def run(
    listen: str,
    token_file: str,
    netns: list[str] | None = None,
    node: str | None = None,
    listen_netns: str | None = None,
    no_ping: bool = False,
) -> int:
    from vethtrace import netns as netnsmod
    from vethtrace.agent.server import Agent, Server

    host, port, family = parse_listen(listen)
    token = read_token(token_file)
    node = node or os.environ.get("NODE_NAME") or socket.gethostname()
    if not node or "/" in node or not node.isprintable():
        raise UserError(f"--node {node!r}: a node name has no '/' and no control characters")
    require_root("vethtrace agent")
    scope = list(dict.fromkeys(netns or [])) or None
    for name in scope or []:
        if not netnsmod.exists(name):
            raise UserError(f"no network namespace named {name!r} (see `ip netns list`)")
    agent = Agent(node, token, scope, allow_ping=not no_ping)

    def make() -> Server:
        try:
            return Server((host, port), agent, family)
        except OSError as exc:
            raise UserError(f"--listen {listen}: {exc.strerror}") from None

    if listen_netns:
        if not netnsmod.exists(listen_netns):
            raise UserError(f"no network namespace named {listen_netns!r} (see `ip netns list`)")
        server = netnsmod.run_in(listen_netns, make)  # the socket stays in that namespace
    else:
        server = make()
    where = f" in {listen_netns}" if listen_netns else ""
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"vethtrace agent: node {node}, serving {', '.join(scope) if scope else 'every namespace'}"
        f" on http://{shown}:{server.server_port}{where}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.stopping.set()  # streams end within a poll
        server.server_close()  # joins the request threads: their collectors are closed
    return 0
