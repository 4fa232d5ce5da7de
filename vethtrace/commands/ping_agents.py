"""`vethtrace ping --agents URL,... --token-file F --from NODE/NETNS NODE/NETNS IP`:
a ping across nodes, its verdict assembled from the nodes the path crosses.

The order: ask every agent for its name and topology (in parallel); merge
them (topology/merge.py: names become NODE/NETNS); predict the path over the
merged topology; ask each node on the path for its events (probes filtered
to `icmp and host IP`) and wait until each says its probes are attached; ask
the source node's agent to send the echo requests; hang up the streams; the
verdict (diagnose/verdict/cluster.py) names the node. An agent that cannot be
asked at any step is named in the verdict, never a traceback. Needs no root
here: only the agents touch kernels.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vethtrace.agent.client import STREAM_TIMEOUT_S, AgentClient, AgentError, EventStream
from vethtrace.diagnose.verdict.cluster import ClusterPing, NodeStatus, assemble, path_nodes
from vethtrace.errors import ExitStatus, UserError
from vethtrace.model import ProbeEvent, Topology, from_dict
from vethtrace.topology.merge import NodeTopology, event_inode, local_name, merge, node_of

GRACE_S = 0.5  # events of the last reply still on their way from the agents
AREAS = "dev,drop,neigh"  # what a ping's verdict reads (as local ping): compiles faster


def _ask(client: AgentClient) -> tuple[str, Topology]:
    info = client.get("info")
    node = str(info.get("node") or client.url) if isinstance(info, dict) else client.url
    return node, from_dict(Topology, client.get("topo"))


def resolve(topo: Topology, name: str, what: str, unasked: list[NodeStatus]) -> str | None:
    """A merged namespace name for NODE/NETNS (or a NETNS only one node has);
    None when it may be on a node that could not be asked; UserError otherwise."""
    if topo.netns_by_name(name) is not None:
        return name
    hits = [ns.name for ns in topo.namespaces if local_name(ns.name) == name and "/" in ns.name]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise UserError(f"{what} {name!r} is on several nodes: say which ({', '.join(hits)})")
    if unasked and (node_of(name) in {n.node for n in unasked} or "/" not in name
                    or any(n.node == n.url for n in unasked)):  # fmt: skip
        return None
    nodes = sorted({node_of(ns.name) for ns in topo.namespaces} - {""})
    raise UserError(f"{what} {name!r}: no such namespace on {', '.join(nodes)} (NODE/NETNS)")


def run(
    agents: str,
    token_file: str | None,
    target_netns: str,
    ip: str,
    source: str | None,
    count: int = 3,
    timeout: float = 5.0,
    size: int = 56,
    as_json: bool = False,
) -> int:
    from vethtrace.agent.client import parse_url
    from vethtrace.commands.agent import read_token
    from vethtrace.commands.ping import parse_ip

    ip = parse_ip(ip)
    urls = list(dict.fromkeys(u.strip() for u in agents.split(",") if u.strip()))
    if not urls:
        raise UserError("--agents: give at least one agent's URL")
    for u in urls:
        parse_url(u)
    if token_file is None:
        raise UserError("--agents needs --token-file (the agents' bearer token)")
    if source is None:
        raise UserError("--agents needs --from NODE/NETNS (the namespace that sends)")
    token = read_token(token_file)
    clients = [AgentClient(u, token) for u in urls]
    statuses = [NodeStatus(u, u) for u in urls]
    parts: list[NodeTopology] = []
    index: dict[str, int] = {}
    by_node: dict[str, tuple[AgentClient, NodeStatus]] = {}
    with ThreadPoolExecutor(max_workers=min(8, len(clients))) as pool:
        futures = [pool.submit(_ask, c) for c in clients]
    for c, st, f in zip(clients, statuses, futures, strict=True):
        try:
            node, topo = f.result()
        except AgentError as exc:
            st.why = str(exc)
            continue
        if node in by_node:
            first = by_node[node][0].url
            raise UserError(f"--agents: {first} and {c.url} both say they are node {node}")
        st.node, st.has_topology = node, True
        by_node[node] = (c, st)
        index[node] = len(parts)
        parts.append(NodeTopology(node, topo))
    merged = merge(parts)
    unasked = [s for s in statuses if s.why]
    src = resolve(merged, source, "--from", unasked)
    dst = resolve(merged, target_netns, "NETNS", unasked)
    run_ = ClusterPing(src or source, dst or target_netns, ip, nodes=statuses)
    if src is None or dst is None:
        run_.ping_error = f"{source if src is None else target_netns} is on no node that answered"
        return _finish(run_, merged, None, [], as_json)

    from vethtrace.diagnose.path import Flow, predict

    pred = predict(merged, Flow(src, ip, "icmp", size=size + 28))
    on_path = list(dict.fromkeys([node_of(src), *path_nodes(pred), node_of(dst)]))
    streams: dict[str, EventStream] = {}
    duration = STREAM_TIMEOUT_S + timeout + count + 10
    for node in on_path:
        if node in by_node:
            streams[node] = by_node[node][0].events(f"icmp and host {ip}", duration, AREAS).start()
    events: list[ProbeEvent] = []
    try:
        _say(f"waiting for {', '.join(streams)} to attach their probes…")
        deadline = time.monotonic() + STREAM_TIMEOUT_S
        for s in streams.values():
            s.ready.wait(max(0.0, deadline - time.monotonic()))
        _say(f"pinging {ip} from {src}…")
        try:
            client = by_node[node_of(src)][0]
            res = client.ping(local_name(src), ip, count, size, timeout)
            run_.sent, run_.replies = int(res.get("sent", 0)), int(res.get("replies", 0))
        except AgentError as exc:
            by_node[node_of(src)][1].why = str(exc)
            run_.ping_error = f"{node_of(src)} could not send it ({exc})"
        time.sleep(GRACE_S)
    finally:
        for s in streams.values():
            s.close()
    for node, s in streams.items():
        st = by_node[node][1]
        if s.error and not st.why:
            st.why = s.error
        if not s.ready.is_set() and not st.why:
            st.why = "its probes were not attached in time"
        for ev in s.take():
            ev.netns = event_inode(index[node], ev.netns)
            events.append(ev)
        st.events = len(s.events)
    return _finish(run_, merged, pred, events, as_json)


def _say(text: str) -> None:
    print(f"vethtrace ping: {text}", file=sys.stderr, flush=True)


def _finish(
    run_: ClusterPing, topo: Topology, pred: Any, events: list[ProbeEvent], as_json: bool
) -> int:
    from vethtrace.diagnose.path.flow import Flow, PathPrediction
    from vethtrace.render import cluster as render

    pred = pred or PathPrediction(Flow(run_.source, run_.ip))
    verdict = assemble(topo, pred, run_, events)
    if as_json:
        doc = render.to_json(verdict, run_, pred, events, topo)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        render.show(verdict, run_, pred, topo)
    return int(ExitStatus.OK if verdict.reachable else ExitStatus.FINDINGS)

