"""The per-node agent (`vethtrace agent`) and its client (`ping --agents`).

HTTP/1.0 with JSON and JSON lines (application/x-ndjson), stdlib only
(http.server's ThreadingHTTPServer, http.client): an existing protocol any
tool can speak (curl, a proxy, `kubectl port-forward`), no wire format of our
own. Every request carries `Authorization: Bearer TOKEN`.

    GET  /v1/info    {"node", "version", "scope", "ping"}
    GET  /v1/topo    the node's scope as `topo --json` prints it
    GET  /v1/check   {"findings": [...]} as `check --json` prints it
    GET  /v1/events  ?filter=PCAP&duration=S[&areas=dev,drop,neigh]: JSON lines,
                     {"type": "ready"} once the probes are attached, then
                     `trace --json`'s event lines, {"type": "alive"} every
                     second, {"type": "end"} last
    POST /v1/ping    {"from", "ip", "count", "size", "timeout"}: echo requests
                     from a namespace in the scope; the sender's events

server.py serves, client.py asks; the verdict over what several agents said
is vethtrace/diagnose/verdict/cluster.py's, the wiring commands/agent.py and
commands/ping_agents.py.
"""

API = "/v1"
TOKEN_HEADER = "Authorization"
