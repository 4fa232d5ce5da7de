"""The agent's pure parts: where it may listen, what a token is, how nodes'
topologies merge (colliding inodes, node-prefixed names, the assumed segment
between uplinks), fixes rewritten for the node, and the cluster verdict."""

from __future__ import annotations

import pytest

from vethtrace.commands.agent import parse_listen, read_token
from vethtrace.diagnose.path import Flow, predict
from vethtrace.diagnose.verdict.cluster import ClusterPing, NodeStatus, assemble
from vethtrace.errors import UserError
from vethtrace.model import Address, IfaceKey, Interface, Namespace, Route, Topology
from vethtrace.topology.merge import (
    NETWORK,
    NodeTopology,
    event_inode,
    localise,
    merge,
    node_of,
    uplinks,
)  # fmt: skip


@pytest.mark.parametrize("text", ["7411", ":7411", "host:7411", "10.0.0.1", "10.0.0.1:0",
                                  "10.0.0.1:70000", "10.0.0.1:x"])  # fmt: skip
def test_listen_is_refused_unless_explicit(text: str) -> None:
    with pytest.raises(UserError):
        parse_listen(text)


def test_listen_accepts_addresses_said_explicitly() -> None:
    assert parse_listen("0.0.0.0:7411")[:2] == ("0.0.0.0", 7411)
    assert parse_listen("[::1]:80")[:2] == ("::1", 80)


def test_token_file(tmp_path) -> None:
    f = tmp_path / "t"
    f.write_text("short\n")
    with pytest.raises(UserError, match="at least 16"):
        read_token(str(f))
    f.write_text("a" * 32 + "\n")
    assert read_token(str(f)) == "a" * 32
    with pytest.raises(UserError, match="No such file"):
        read_token(str(tmp_path / "missing"))


def _node(inode: int, underlay: str, pod_net: str, pod_ip: str) -> Topology:
    """A node namespace (uplink eth0 whose peer nobody serves, a veth to its pod)."""
    node = Namespace(inode, "root")
    pod = Namespace(inode + 1, "pod")
    eth0 = Interface(IfaceKey(inode, 2), "eth0", "veth", True, "UP", True, 1500,
                     mac="02:00:00:00:00:0" + underlay[-1], peer=IfaceKey(999, 7),
                     addresses=[Address(underlay, 24)])  # fmt: skip
    gw = pod_net.rsplit(".", 1)[0] + ".1"
    v = Interface(IfaceKey(inode, 3), "veth-pod", "veth", True, "UP", True, 1500,
                  mac=f"02:00:00:00:{inode % 100:02}:03", peer=IfaceKey(inode + 1, 2),
                  addresses=[Address(gw, 24)])  # fmt: skip
    p = Interface(IfaceKey(inode + 1, 2), "eth0", "veth", True, "UP", True, 1500,
                  mac=f"02:00:00:00:{inode % 100:02}:04", peer=IfaceKey(inode, 3),
                  addresses=[Address(pod_ip, 24)])  # fmt: skip
    node.interfaces = [eth0, v]
    node.sysctls = {"net.ipv4.ip_forward": "1"}
    node.routes = [Route(f"{underlay.rsplit('.', 1)[0]}.0/24", oif=2, scope="link"),
                   Route(pod_net, oif=3, scope="link")]  # fmt: skip
    pod.interfaces = [p]
    pod.routes = [Route(pod_net, oif=2, scope="link"), Route("default", oif=2, gateway=gw)]
    return Topology(namespaces=[node, pod])


def test_merge_keeps_colliding_inodes_apart_and_joins_uplinks() -> None:
    a = _node(4026531840, "10.9.0.1", "10.50.0.0/24", "10.50.0.2")
    b = _node(4026531840, "10.9.0.2", "10.50.1.0/24", "10.50.1.2")  # same inodes
    m = merge([NodeTopology("a", a), NodeTopology("b", b)])
    names = [ns.name for ns in m.namespaces]
    assert names == ["a/root", "a/pod", "b/root", "b/pod", NETWORK]
    assert len({ns.inode for ns in m.namespaces}) == 5
    assert a.namespaces[0].name == "root"  # inputs untouched
    a_eth0 = m.netns_by_name("a/root").iface_by_name("eth0")
    b_eth0 = m.netns_by_name("b/root").iface_by_name("eth0")
    net = m.netns_by_name(NETWORK)
    ports = [i for i in net.interfaces if i.kind == "veth"]
    assert {p.peer for p in ports} == {a_eth0.key, b_eth0.key}
    assert m.iface(a_eth0.peer).master == m.iface(b_eth0.peer).master
    assert event_inode(1, 4026531840) == m.netns_by_name("b/root").inode
    assert node_of("b/pod") == "b" and uplinks(m) == []
    assert any("assumed" in n for n in m.notes)


def test_uplinks_in_different_subnets_are_not_joined() -> None:
    a = _node(10, "10.9.0.1", "10.50.0.0/24", "10.50.0.2")
    b = _node(10, "10.8.0.2", "10.50.1.0/24", "10.50.1.2")
    m = merge([NodeTopology("a", a), NodeTopology("b", b)])
    assert m.netns_by_name(NETWORK) is None


def test_localise_names_the_node() -> None:
    m = merge([NodeTopology("node-b", _node(10, "10.9.0.2", "10.50.1.0/24", "10.50.1.2"))])
    got = localise("ip -n node-b/pod link set eth0 up", m)
    assert got == "on node-b: ip -n pod link set eth0 up"
    assert localise("ip -n node-b/root link set eth0 up", m) == "on node-b: ip link set eth0 up"
    assert localise("sysctl -w x=1", m) == "sysctl -w x=1"


def _cluster(break_b: bool) -> tuple[Topology, object]:
    a = _node(10, "10.9.0.1", "10.50.0.0/24", "10.50.0.2")
    b = _node(10, "10.9.0.2", "10.50.1.0/24", "10.50.1.2")
    a.namespaces[0].routes.append(Route("10.50.1.0/24", oif=2, gateway="10.9.0.2"))
    b.namespaces[0].routes.append(Route("10.50.0.0/24", oif=2, gateway="10.9.0.1"))
    if break_b:
        b.namespaces[0].iface_by_name("veth-pod").admin_up = False
    m = merge([NodeTopology("a", a), NodeTopology("b", b)])
    return m, predict(m, Flow("a/pod", "10.50.1.2"))


def test_verdict_names_the_node_of_the_predicted_failure() -> None:
    m, pred = _cluster(break_b=True)
    run = ClusterPing("a/pod", "b/pod", "10.50.1.2", sent=2, replies=0,
                      nodes=[NodeStatus("a", "u1", has_topology=True),
                             NodeStatus("b", "u2", has_topology=True)])  # fmt: skip
    v = assemble(m, pred, run, [])
    assert v.kind == "no-reply" and v.culprit_netns == "b/root"
    assert ": no route on b (root/eth0)" in v.summary  # veth-pod down: its route is gone
    assert all(f.startswith("on b: ") and "b/root" not in f for f in v.fix)


def test_verdict_delivered_and_an_agent_that_could_not_be_asked() -> None:
    m, pred = _cluster(break_b=False)
    assert pred.ok
    run = ClusterPing("a/pod", "b/pod", "10.50.1.2", sent=3, replies=3,
                      nodes=[NodeStatus("a", "u1", has_topology=True),
                             NodeStatus("b", "u2", why="connection refused",
                                        has_topology=True)])  # fmt: skip
    v = assemble(m, pred, run, [])
    assert v.reachable and "across a -> b" in v.summary
    assert "b could not be asked (connection refused)" in v.summary
