"""Talking to a container runtime's REST API (Docker's, and Podman's Docker-compatible
one) with the standard library: HTTP/1.1 over the daemon's unix socket.

Why not the docker SDK or reading /var/lib/docker: the SDK is a dependency for
three GET requests, and the private files change between versions and live
wherever `--data-root` put them; the API answers the same on every version
since 1.24 and tells us what the daemon believes now (running or not, which
pid, which networks).

Where the API is: DOCKER_HOST / CONTAINER_HOST (`unix:///path` or `tcp://host:port`,
the same variables the CLIs read; `vethtrace --docker-host/--podman-host` set
them), else the runtime's default socket. Every failure is a RuntimeUnreachable
carrying one line that names the runtime and the address.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import http.client

from vethtrace.errors import UserError

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Endpoint:
    runtime: str  # docker, podman
    env: str  # the variable that overrides the address
    default: str  # unix:///var/run/docker.sock

    @property
    def url(self) -> str:
        return os.environ.get(self.env) or self.default

    @property
    def socket_absent(self) -> bool:
        """A unix socket address with nothing at that path (no daemon there)."""
        url = self.url
        return url.startswith("unix://") and not os.path.exists(url[len("unix://"):])

    @property
    def explicit(self) -> bool:
        """Set by the user (environment or flag), not our guess."""
        return bool(os.environ.get(self.env))


DOCKER = Endpoint("docker", "DOCKER_HOST", "unix:///var/run/docker.sock")
PODMAN = Endpoint("podman", "CONTAINER_HOST", "unix:///run/podman/podman.sock")


class RuntimeUnreachable(UserError):
    """The runtime's API did not answer (no socket, refused, timed out, not HTTP)."""


class NotFound(Exception):
    pass


@functools.cache
def _unix_connection() -> Callable[[str, float], http.client.HTTPConnection]:
    """An HTTPConnection over a unix socket. http.client is imported when a
    runtime is first asked, here and in Client: it imports email and ssl
    (~25 ms), which every command naming namespaces would pay otherwise."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self._path = path

        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self._path)
            except OSError:
                s.close()
                raise
            self.sock = s

    return UnixConnection


class Client:
    """GET requests against one runtime's API; JSON answers."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        import http.client  # on first use (see _unix_connection)

        url = self.url
        if url.startswith("unix://"):
            return _unix_connection()(url[len("unix://"):], self.timeout)
        if url.startswith("tcp://") or url.startswith("http://"):
            hostport = url.split("://", 1)[1].rstrip("/")
            return http.client.HTTPConnection(hostport, timeout=self.timeout)
        raise RuntimeUnreachable(
            f"{self.endpoint.runtime}: unsupported API address {url!r} "
            f"({self.endpoint.env} takes unix:///path or tcp://host:port)"
        )

    def _fail(self, why: str) -> RuntimeUnreachable:
        rt = self.endpoint.runtime
        return RuntimeUnreachable(f"{rt}: the API at {self.url} did not answer ({why})")

    def get(self, path: str) -> Any:
        """The decoded JSON answer; NotFound on 404, RuntimeUnreachable otherwise."""
        import http.client  # on first use (see _unix_connection)

        conn = self._connection()
        try:
            conn.request("GET", path, headers={"Host": "localhost"})
            resp = conn.getresponse()
            body = resp.read()
        except FileNotFoundError:
            raise self._fail("no such socket") from None
        except (OSError, http.client.HTTPException) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise self._fail(why) from None
        finally:
            conn.close()
        if resp.status == 404:
            raise NotFound(path)
        if resp.status >= 400:
            raise self._fail(f"HTTP {resp.status} for {path}")
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise self._fail(f"not JSON from {path}") from None

    def peer_pid(self) -> int | None:
        """The pid of the process serving the unix socket (SO_PEERCRED): the daemon,
        whose network namespace holds its bridges and firewall rules."""
        if not self.url.startswith("unix://"):
            return None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.url[len("unix://"):])
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        finally:
            s.close()
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid or None
