"""check's path rules (diagnose/rules/paths.py) on constructed topologies: each
kind of failing decision maps to its rule id and culprit; healthy NAT'd,
Calico-style and Docker-style nodes raise nothing; a static finding that
already names the culprit suppresses the path one."""

from __future__ import annotations

from typing import Any

import pytest

from vethtrace.diagnose.check import run_rules
from vethtrace.diagnose.path import Hop
from vethtrace.diagnose.rules.base import Context
from vethtrace.diagnose.rules.paths import failures, path_findings, rule_of
from vethtrace.model import (
    Address,
    BridgePortInfo,
    Finding,
    IfaceKey,
    Interface,
    Namespace,
    Neighbour,
    Route,
    Topology,
)

NODE, OUT, POD_A, POD_B = 10, 11, 12, 13


def nic(ns: int, idx: int, name: str, addr: str | None = None, peer: tuple[int, int] | None = None,
        kind: str = "veth", master: int | None = None) -> Interface:  # fmt: skip
    i = Interface(IfaceKey(ns, idx), name, kind, True, "UP", True, 1500,
                  f"02:00:00:00:{ns:02x}:{idx:02x}", master=master,
                  peer=IfaceKey(*peer) if peer else None)  # fmt: skip
    if master is not None:
        i.bridge_port = BridgePortInfo()
    if addr:
        a, plen = addr.split("/")
        i.addresses.append(Address(a, int(plen)))
    return i


def chain(name: str, hook: str, policy: str = "accept", prio: int = 0,
          ctype: str = "filter", family: str = "ip", table: str = "t") -> dict:  # fmt: skip
    return {"chain": {"family": family, "table": table, "name": name, "hook": hook,
                      "prio": prio, "type": ctype, "policy": policy}}  # fmt: skip


def nft_rule(chain_name: str, handle: int, *expr: dict, family: str = "ip",
             table: str = "t") -> dict:  # fmt: skip
    return {"rule": {"family": family, "table": table, "chain": chain_name, "handle": handle,
                     "expr": list(expr)}}  # fmt: skip


def match(key: str, value: object) -> dict:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}}


def bridged(masquerade: bool = True, bridge: str = "cni0") -> Topology:
    """pod-a, pod-b on `bridge` in node (10.22.0.1/24, forwarding), node's uplink
    up0 (192.0.2.1/24) to outside (192.0.2.2), node's default route via outside."""
    node = Namespace(NODE, "node", interfaces=[
        nic(NODE, 2, "up0", "192.0.2.1/24", (OUT, 2)),
        nic(NODE, 3, bridge, "10.22.0.1/24", kind="bridge"),
        nic(NODE, 4, "veth-a", None, (POD_A, 2), master=3),
        nic(NODE, 5, "veth-b", None, (POD_B, 2), master=3),
    ], sysctls={"net.ipv4.ip_forward": "1"})  # fmt: skip
    for i in node.interfaces:
        i.sysctls = {"forwarding": "1"}
    node.routes = [Route("192.0.2.0/24", 2, scope="link"), Route("10.22.0.0/24", 3, scope="link"),
                   Route("default", 2, "192.0.2.2")]  # fmt: skip
    if masquerade:
        node.nft = list(MASQUERADE_UP0)
    pods = [(f"10.22.0.{k}/24", "10.22.0.0/24", "10.22.0.1") for k in (2, 3)]
    return _with_outside_and_pods(node, pods)


MASQUERADE_UP0 = [chain("post", "postrouting", prio=100, ctype="nat"),
                  nft_rule("post", 2, match("oifname", "up0"), {"masquerade": None})]  # fmt: skip


def _with_outside_and_pods(node: Namespace, pods: list[tuple[str, str, str]]) -> Topology:
    """node plus outside (192.0.2.2 on node's up0) and pod-a, pod-b on node's
    interfaces 4 and 5: (address, connected route, default gateway) each."""
    out = Namespace(OUT, "outside", interfaces=[nic(OUT, 2, "eth0", "192.0.2.2/24", (NODE, 2))])
    out.routes = [Route("192.0.2.0/24", 2, scope="link")]
    made = []
    for (inode, name, port), (addr, link, gw) in zip(
        ((POD_A, "pod-a", 4), (POD_B, "pod-b", 5)), pods, strict=True
    ):
        pod = Namespace(inode, name, interfaces=[nic(inode, 2, "eth0", addr, (NODE, port))])
        pod.routes = [Route(link, 2, scope="link"), Route("default", 2, gw)]
        made.append(pod)
    return Topology([node, out, *made])


def calico(proxy_arp: bool = True) -> Topology:
    """Calico-style: each pod's default route via 169.254.1.1 (nobody holds it) on a
    veth whose host end answers by proxy ARP; node routes /32s to the veths."""
    node = Namespace(NODE, "node", interfaces=[
        nic(NODE, 2, "up0", "192.0.2.1/24", (OUT, 2)),
        nic(NODE, 4, "cali-a", None, (POD_A, 2)),
        nic(NODE, 5, "cali-b", None, (POD_B, 2)),
    ], sysctls={"net.ipv4.ip_forward": "1"})  # fmt: skip
    for i in node.interfaces:
        i.sysctls = {"forwarding": "1", "proxy_arp": "1" if proxy_arp and i.name != "up0" else "0"}
    node.routes = [
        Route("192.0.2.0/24", 2, scope="link"),
        Route("10.24.0.2/32", 4, scope="link"),
        Route("10.24.0.3/32", 5, scope="link"),
        Route("default", 2, "192.0.2.2"),
    ]
    node.nft = list(MASQUERADE_UP0)
    gw = "169.254.1.1"
    return _with_outside_and_pods(node, [("10.24.0.2/32", f"{gw}/32", gw),
                                         ("10.24.0.3/32", f"{gw}/32", gw)])  # fmt: skip


def docker(accept: bool = True) -> Topology:
    """Docker-style: docker0 bridge, FORWARD policy drop with Docker's accept rules
    for traffic from docker0, bridge-nf-call-iptables=1, masquerade out of up0."""
    topo = bridged(bridge="docker0")
    node = topo.netns_by_name("node")
    assert node is not None
    node.sysctls["net.bridge.bridge-nf-call-iptables"] = "1"
    accepts: list[dict[str, Any]] = []
    if accept:
        accepts = [nft_rule("FORWARD", 10, match("iifname", "docker0"), {"accept": None},
                            table="filter"),
                   nft_rule("FORWARD", 11, match("oifname", "docker0"), {"accept": None},
                            table="filter")]  # fmt: skip
    node.nft = [*(node.nft or []), chain("FORWARD", "forward", policy="drop", table="filter"),
                *accepts]  # fmt: skip
    # what discovery also summarises: the ruleset, and Docker's own chains
    node.firewall = {"nftables": node.nft, "regular_chains": ["ip filter DOCKER"]}
    return topo


def errors(topo: Topology) -> list[tuple[str, str, str | None]]:
    return [(f.rule, f.netns, f.interface) for f in run_rules(topo)
            if f.severity in ("error", "warning")]  # fmt: skip


@pytest.mark.parametrize("build", [bridged, calico, docker], ids=["nat", "calico", "docker"])
def test_healthy_nodes_raise_nothing(build: Any) -> None:
    topo = build()
    ctx = Context(topo)
    assert not [(f.probe.src.name, f.probe.dst, f.hop.decision) for f in failures(ctx)]
    assert errors(topo) == []


def test_missing_masquerade_blames_the_uplink() -> None:
    found = errors(bridged(masquerade=False))
    assert ("missing-masquerade", "node", "up0") in found
    # the outside's missing route is the same failure, not reported twice
    assert not [f for f in found if f[0] == "missing-route"]


def test_forward_policy_drop_is_netfilter_forward_drop() -> None:
    assert ("netfilter-forward-drop", "node", "cni0") in {
        (r, n, i) for r, n, i in errors(_forward_drop())
    }


def _forward_drop() -> Topology:
    topo = bridged()
    node = topo.netns_by_name("node")
    assert node is not None
    node.nft = [*(node.nft or []), chain("fwd", "forward", policy="drop")]
    return topo


def test_docker_without_accept_rules_is_a_forward_drop_not_bridge_netfilter() -> None:
    found = errors(docker(accept=False))
    assert ("netfilter-forward-drop", "node", "docker0") in found
    assert not [f for f in found if f[0] == "bridge-netfilter-drop"]


def test_calico_without_proxy_arp() -> None:
    found = errors(calico(proxy_arp=False))
    assert ("proxy-arp-missing", "node", "cali-a") in found
    assert ("proxy-arp-missing", "node", "cali-b") in found


def test_wrong_static_neighbour_mac() -> None:
    topo = bridged()
    pod_a = topo.netns_by_name("pod-a")
    assert pod_a is not None
    pod_a.neighbours.append(Neighbour(2, "10.22.0.3", "02:00:00:00:0a:99", "PERMANENT"))
    assert ("neighbour-wrong-mac", "pod-a", "eth0") in errors(topo)


def test_a_static_finding_on_the_culprit_suppresses_the_path_one() -> None:
    ctx = Context(bridged(masquerade=False))
    ctx.findings = []
    assert [(f.rule, f.netns, f.interface) for f in path_findings(ctx, {"missing-masquerade"})] \
        == [("missing-masquerade", "node", "up0")]  # fmt: skip
    ctx.findings = [Finding("some-static-rule", "error", "node", "up0", "s", "e")]
    assert list(path_findings(ctx, {"missing-masquerade"})) == []
    ctx.findings = [Finding("some-static-rule", "info", "node", "up0", "s", "e")]
    assert len(list(path_findings(ctx, {"missing-masquerade"}))) == 1  # info covers nothing


@pytest.mark.parametrize(
    ("step", "source", "decision", "blame", "rule"),
    [
        ("route", "no route", "10.0.0.2: no route", ("node", "up0"), "missing-masquerade"),
        ("route", "no route", "10.0.0.2: no route", None, "missing-route"),
        ("forward", "sysctl net.ipv4.ip_forward=0", "not forwarded", None, "forwarding-disabled"),
        ("rp_filter", "rp_filter 1", "dropped", None, "rp-filter-strict"),
        ("nft", "nft ip t fwd policy drop", "forward: fwd policy drop", None,
         "netfilter-forward-drop"),
        ("nft", "nft bridge t fwd policy drop", "forward: fwd policy drop", None,
         "bridge-netfilter-drop"),
        ("arp", "sysctl proxy_arp=0 on cali-a", "no answer", None, "proxy-arp-missing"),
        ("arp", "sysctl arp_ignore=1", "no answer", None, "arp-ignore"),
        ("neigh", "neigh 10.0.0.2 dev eth0 lladdr 02:00:00:00:00:99 PERMANENT",
         "10.0.0.2 at 02:00:00:00:00:99", None, "neighbour-wrong-mac"),
        ("bridge", "bridge link veth-b flood off", "not flooded", None, "bridge-port-flood-off"),
        ("bridge", "bridge link veth-b isolated on", "isolated", None, "isolated-ports"),
        ("bridge", "bridge link veth-b state disabled", "disabled", None, "interface-down"),
        ("bridge", "bridge link veth-b state disabled", "disabled", ("b", "eth0"),
         "veth-peer-down"),
        ("bridge", "bridge link veth-b state blocking", "blocking", None,
         "bridge-port-not-forwarding"),
        ("veth", "link b/eth0 state DOWN", "no carrier", ("b", "eth0"), "veth-peer-down"),
        ("veth", "mtu b/eth0 1400", "too big", None, "mtu-mismatch"),
        ("socket", "sockets of b (tcp)", "nothing listens", None, "path-broken"),
    ],
)
def test_each_kind_of_decision_has_its_rule(
    step: str, source: str, decision: str, blame: tuple[str, str] | None, rule: str
) -> None:
    hop = Hop("n", "i", step, decision, source, "fail", "cause")
    hop.blame = blame
    assert rule_of(hop) == rule
    assert hop.culprit == (blame or ("n", "i"))
