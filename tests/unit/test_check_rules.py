"""Rules on small hand-built topologies (no root): the cases labs cannot build
on our kernel (bonds, arp_filter, orphans, a machine's root namespace noise)
and the edges of each rule's judgement."""

from __future__ import annotations

import itertools
import shlex

from vethtrace.diagnose.check import run_rules
from vethtrace.diagnose.rules.netfilter import forward_chains
from vethtrace.model import (
    Address,
    BridgePortInfo,
    Finding,
    IfaceKey,
    Interface,
    Namespace,
    Route,
    Topology,
)

_inodes = itertools.count(4026530000)
_macs = itertools.count(1)


def nsp(name: str, *ifaces: Interface, routes: list[Route] | None = None,
        sysctls: dict[str, str] | None = None, named: bool = True, pids: list[int] | None = None,
        firewall: dict | None = None) -> Namespace:
    inode = next(_inodes)
    lo = Interface(IfaceKey(inode, 1), "lo", "loopback", True, "UNKNOWN", True, 65536,
                   addresses=[Address("127.0.0.1", 8, scope="host")])
    items = [lo]
    for n, i in enumerate(ifaces, 2):
        i.key = IfaceKey(inode, n)
        items.append(i)
    ns = Namespace(inode, name, named=named, pids=pids or [], interfaces=items,
                   routes=routes or [], sysctls=sysctls or {}, firewall=firewall or {})
    return ns


def dev(name: str, kind: str = "veth", *addrs: str, up: bool = True, carrier: bool = True,
        mtu: int = 1500, **kw) -> Interface:
    addresses = [Address(a.split("/")[0], int(a.split("/")[1])) for a in addrs]
    if kind != "loopback":  # every Ethernet-like device has one; the path model needs it
        m = next(_macs)
        kw.setdefault("mac", f"02:00:00:{m >> 16 & 255:02x}:{m >> 8 & 255:02x}:{m & 255:02x}")
    return Interface(IfaceKey(0, 0), name, kind, up, "UP" if up else "DOWN", carrier and up, mtu,
                     addresses=addresses, **kw)


def pair(a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
    ia, ib = a.iface_by_name(a_name), b.iface_by_name(b_name)
    assert ia and ib
    ia.peer, ib.peer = ib.key, ia.key


def enslave(ns: Namespace, port: str, master: str, **port_info) -> None:
    p, m = ns.iface_by_name(port), ns.iface_by_name(master)
    assert p and m
    p.master = m.key.ifindex
    if m.kind == "bridge":
        p.bridge_port = BridgePortInfo(**port_info)


def idx(ns: Namespace, name: str) -> int:
    i = ns.iface_by_name(name)
    assert i
    return i.key.ifindex


def rules_of(topo: Topology, level: tuple[str, ...] = ("error", "warning")) -> list[tuple]:
    return [(f.rule, f.netns, f.interface) for f in run_rules(topo) if f.severity in level]


def only(topo: Topology, rule: str) -> list[Finding]:
    return [f for f in run_rules(topo) if f.rule == rule]


# --- rx_handler masters -------------------------------------------------------


def test_address_on_bond_slave_moves_to_bond_with_routes() -> None:
    host = nsp("host", dev("bond0", "bond", carrier=True), dev("veth0", "veth", "10.6.0.1/24"))
    enslave(host, "veth0", "bond0")
    host.routes = [Route("default", oif=idx(host, "veth0"), gateway="10.6.0.254")]
    peer = nsp("peer", dev("veth1", "veth", "10.6.0.2/24"))
    pair(host, "veth0", peer, "veth1")
    (f,) = only(Topology([host, peer]), "address-on-bond-slave")
    assert (f.netns, f.interface, f.severity) == ("host", "veth0", "error")
    assert f.fix == [
        "ip -n host addr del 10.6.0.1/24 dev veth0",
        "ip -n host addr add 10.6.0.1/24 dev bond0",
        "ip -n host route replace default via 10.6.0.254 dev bond0",
    ]
    assert not only(Topology([host, peer]), "address-on-bridge-port")


def test_bridge_port_with_only_link_local_v6_is_fine() -> None:
    host = nsp("host", dev("br0", "bridge", "10.0.0.1/24"), dev("veth0"))
    host.iface_by_name("veth0").addresses = [Address("fe80::1", 64, 6, "link")]
    enslave(host, "veth0", "br0")
    assert not only(Topology([host]), "address-on-bridge-port")


def test_macvlan_lower_address_gets_a_shim() -> None:
    host = nsp("h", dev("eth0", "device", "10.15.0.1/24"))
    host.routes = [Route("default", oif=idx(host, "eth0"), gateway="10.15.0.254")]
    c1 = nsp("c1", dev("mv0", "macvlan", "10.15.0.2/24"))
    c1.iface_by_name("mv0").link = host.iface_by_name("eth0").key
    (f,) = only(Topology([host, c1]), "macvlan-lower-address")
    assert (f.netns, f.interface) == ("h", "eth0")
    assert "mv0 in c1" in f.summary
    assert f.fix[:2] == ["ip -n h link add mv-eth0 link eth0 type macvlan mode bridge",
                         "ip -n h link set mv-eth0 up"]
    assert "ip -n h route replace default via 10.15.0.254 dev mv-eth0" in f.fix


# --- links --------------------------------------------------------------------


def test_orphan_veth_states() -> None:
    gone = dev("v0", "veth", "10.16.0.1/24", carrier=False, peer_state="netns-gone")
    hidden_alive = dev("v1", "veth", "10.16.1.1/24", peer_state="unknown")
    hidden_dead = dev("v2", "veth", "10.16.2.1/24", carrier=False, peer_state="unknown")
    x = nsp("x", gone, hidden_alive, hidden_dead)
    found = {(f.interface, f.severity) for f in only(Topology([x]), "orphan-veth")}
    assert found == {("v0", "warning"), ("v2", "warning")}
    assert not only(Topology([x]), "no-carrier")


def test_mtu_physical_smallest_brings_the_others_down() -> None:
    host = nsp("host", dev("br0", "bridge", "10.0.0.1/24", mtu=1400),
               dev("eth0", "device", mtu=1400), dev("veth0", mtu=1500))
    enslave(host, "eth0", "br0")
    enslave(host, "veth0", "br0")
    c = nsp("c", dev("eth0", "veth", "10.0.0.2/24", mtu=1500))
    pair(host, "veth0", c, "eth0")
    found = {f.interface: f.fix for f in only(Topology([host, c]), "mtu-mismatch")}
    assert found == {"veth0": ["ip -n host link set veth0 mtu 1400",
                               "ip -n c link set eth0 mtu 1400"]}


def test_root_namespace_noise_is_quiet() -> None:
    """What real hosts carry: docker0 up without ports (no carrier), ifb and
    tunnel devices down without addresses, a Docker-style FORWARD policy drop."""
    root = nsp(
        "root",
        dev("eth0", "device", "192.0.2.2/24"),
        dev("ifb0", "ifb", up=False),
        dev("tunl0", "ipip", up=False),
        dev("docker0", "bridge", "172.17.0.1/16", carrier=False),
        dev("wlan0", "device", up=False),
        routes=[Route("default", oif=2, gateway="192.0.2.1"),
                Route("192.0.2.0/24", oif=2, scope="link")],
        sysctls={"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"},
        firewall={"chains": [{"family": "ip", "table": "filter", "chain": "FORWARD",
                              "type": "filter", "hook": "forward", "policy": "drop",
                              "rules": 4, "drop_rules": 0}]},
    )
    root.iface_by_name("eth0").addresses.append(
        Address("fe80::1", 64, 6, "link"))
    assert rules_of(Topology([root])) == []


def test_docker_style_policy_drop_with_ports_is_only_a_note() -> None:
    root = nsp("root", dev("docker0", "bridge", "172.17.0.1/16"), dev("vethA"), dev("vethB"),
               sysctls={"net.bridge.bridge-nf-call-iptables": "1"},
               firewall={"chains": [{"family": "ip", "table": "filter", "chain": "FORWARD",
                                     "hook": "forward", "policy": "drop", "rules": 4,
                                     "drop_rules": 0}]})
    enslave(root, "vethA", "docker0")
    enslave(root, "vethB", "docker0")
    (f,) = only(Topology([root]), "bridge-netfilter-drop")
    assert f.severity == "info"


# --- bridge -------------------------------------------------------------------


def test_stp_blocking_on_a_loop_is_stp_working() -> None:
    sw = nsp("sw", dev("br0", "bridge"), dev("l1"), dev("l2"), dev("a"))
    sw.iface_by_name("br0").bridge_stp = True
    enslave(sw, "l1", "br0", state="forwarding")
    enslave(sw, "l2", "br0", state="blocking")
    enslave(sw, "a", "br0", state="forwarding")
    pair(sw, "l1", sw, "l2")  # a cable from the bridge back into itself
    (f,) = only(Topology([sw]), "bridge-port-not-forwarding")
    assert (f.interface, f.severity, f.fix) == ("l2", "info", [])


def test_bridge_family_drop_fix_deletes_by_handle() -> None:
    ruleset = {"nftables": [
        {"table": {"family": "bridge", "name": "f"}},
        {"chain": {"family": "bridge", "table": "f", "name": "fwd", "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "bridge", "table": "f", "chain": "fwd", "handle": 7, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "icmp"}},
            {"drop": None}]}},
    ]}
    (chain,) = forward_chains(ruleset)
    assert chain.drops[0].text == "l4proto icmp drop" and chain.drops[0].handle == 7
    sw = nsp("sw", dev("br0", "bridge"), dev("p1"), dev("p2"), firewall=ruleset)
    enslave(sw, "p1", "br0")
    enslave(sw, "p2", "br0")
    (f,) = only(Topology([sw]), "bridge-netfilter-drop")
    assert f.fix == ["ip netns exec sw nft delete rule bridge f fwd handle 7"]
    assert shlex.split(f.fix[0])[-1] == "7"


def test_iptables_jump_chains_are_followed() -> None:
    ruleset = {"nftables": [
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter",
                   "hook": "forward", "policy": "accept"}},
        {"chain": {"family": "ip", "table": "filter", "name": "USER"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 2,
                  "expr": [{"jump": {"target": "USER"}}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "USER", "handle": 3,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                      "right": "br0"}}, {"accept": None}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "USER", "handle": 4,
                  "expr": [{"drop": None}]}},
    ]}
    (chain,) = forward_chains(ruleset)
    assert chain.drops_anything and chain.accepted_ifnames == {"br0"}


# --- routing and ARP ----------------------------------------------------------


def _two_links_to(srv_sysctls: dict[str, str]) -> Topology:
    """a --eth0-- srv --eth1-- x, srv routes a's address back through eth1."""
    a = nsp("a", dev("eth0", "veth", "10.14.0.1/24"))
    srv = nsp("srv", dev("eth0", "veth", "10.14.0.2/24"), dev("eth1", "veth", "10.14.9.2/24"),
              sysctls=srv_sysctls)
    srv.routes = [Route("10.14.0.1/32", oif=idx(srv, "eth1"), gateway="10.14.9.1")]
    x = nsp("x", dev("eth0", "veth", "10.14.9.1/24"))
    pair(a, "eth0", srv, "eth0")
    pair(srv, "eth1", x, "eth0")
    return Topology([a, srv, x])


def test_arp_filter_with_route_back_elsewhere() -> None:
    topo = _two_links_to({"net.ipv4.conf.all.arp_filter": "1"})
    (f,) = only(topo, "arp-filter")
    assert (f.netns, f.interface) == ("srv", "eth0")
    assert f.fix == ["ip netns exec srv sysctl -w net.ipv4.conf.all.arp_filter=0"]
    assert not only(_two_links_to({"net.ipv4.conf.all.arp_filter": "0"}), "arp-filter")


def test_loose_rp_filter_is_fine_strict_is_not() -> None:
    strict = _two_links_to({"net.ipv4.conf.all.rp_filter": "1"})
    (f,) = only(strict, "rp-filter-strict")
    assert (f.netns, f.interface) == ("srv", "eth0")
    assert not only(_two_links_to({"net.ipv4.conf.all.rp_filter": "2"}), "rp-filter-strict")


def test_arp_ignore_8_silences_even_own_addresses() -> None:
    a = nsp("a", dev("eth0", "veth", "10.9.0.1/24"))
    srv = nsp("srv", dev("eth0", "veth", "10.9.0.2/24"))
    srv.iface_by_name("eth0").sysctls = {"arp_ignore": "8"}
    pair(a, "eth0", srv, "eth0")
    (f,) = only(Topology([a, srv]), "arp-ignore")
    assert f.fix == ["ip netns exec srv sysctl -w net.ipv4.conf.eth0.arp_ignore=0"]


def test_duplicate_keeps_the_gateway() -> None:
    """a took the address b routes through (br0's): a is the one to renumber."""
    sw = nsp("sw", dev("br0", "bridge", "10.7.0.1/24"), dev("pa"), dev("pb"))
    enslave(sw, "pa", "br0")
    enslave(sw, "pb", "br0")
    a = nsp("a", dev("eth0", "veth", "10.7.0.1/24"))
    b = nsp("b", dev("eth0", "veth", "10.7.0.9/24"))
    pair(sw, "pa", a, "eth0")
    pair(sw, "pb", b, "eth0")
    b.routes = [Route("default", oif=idx(b, "eth0"), gateway="10.7.0.1")]
    (f,) = only(Topology([sw, a, b]), "duplicate-address")
    assert (f.netns, f.interface) == ("a", "eth0")
    assert f.fix == ["ip -n a addr del 10.7.0.1/24 dev eth0",
                     "ip -n a addr add 10.7.0.2/24 dev eth0"]


def test_fix_commands_for_root_and_process_namespaces() -> None:
    root = nsp("root", dev("br0", "bridge"), dev("veth0", "veth", "10.1.1.1/24"))
    enslave(root, "veth0", "br0")
    cont = nsp("pid:4242(nginx)", dev("br1", "bridge"), dev("eth9", "veth", "10.2.2.2/24"),
               named=False, pids=[4242])
    enslave(cont, "eth9", "br1")
    fixes = {f.netns: f.fix[0] for f in only(Topology([root, cont]), "address-on-bridge-port")}
    assert fixes == {
        "root": "ip addr del 10.1.1.1/24 dev veth0",
        "pid:4242(nginx)": "nsenter --net=/proc/4242/ns/net ip addr del 10.2.2.2/24 dev eth9",
    }


def test_legacy_iptables_with_bridged_traffic_is_a_note() -> None:
    sw = nsp("sw", dev("br0", "bridge"), dev("p1"), dev("p2"),
             sysctls={"net.bridge.bridge-nf-call-iptables": "1"},
             firewall={"nftables": False, "chains": [], "iptables_legacy": ["filter"]})
    enslave(sw, "p1", "br0")
    enslave(sw, "p2", "br0")
    (f,) = only(Topology([sw]), "bridge-netfilter-drop")
    assert f.severity == "info" and "iptables-legacy" in f.explanation
    sw.sysctls["net.bridge.bridge-nf-call-iptables"] = "0"
    assert not only(Topology([sw]), "bridge-netfilter-drop")


def test_bridge_mtu_above_its_ports() -> None:
    sw = nsp("sw", dev("br0", "bridge", "10.0.0.1/24", mtu=9000), dev("p1", mtu=1500))
    enslave(sw, "p1", "br0")
    (f,) = only(Topology([sw]), "mtu-mismatch")
    assert (f.interface, f.fix) == ("br0", ["ip -n sw link set br0 mtu 1500"])


def test_hundreds_of_namespaces_stay_fast() -> None:
    """Rules index the topology once; 500 containers on one bridge must not go
    quadratic (measured ~0.3 s here; the bound leaves room for a busy machine)."""
    import time

    n = 500
    hub = nsp("hub", dev("br0", "bridge", "10.0.0.1/16"), *[dev(f"p{i}") for i in range(n)],
              sysctls={"net.ipv4.ip_forward": "1"})
    namespaces = [hub]
    for i in range(n):
        enslave(hub, f"p{i}", "br0")
        c = nsp(f"c{i}", dev("eth0", "veth", f"10.0.{1 + i // 250}.{1 + i % 250}/16"))
        pair(hub, f"p{i}", c, "eth0")
        namespaces.append(c)
    namespaces[-1].iface_by_name("eth0").addresses[0].address = "10.0.1.1"  # one duplicate
    t0 = time.monotonic()
    found = rules_of(Topology(namespaces))
    assert time.monotonic() - t0 < 5.0
    assert found == [("duplicate-address", f"c{n - 1}", "eth0")]
