"""Path prediction on hand-built container-network cases the labs do not have
(NAT, Calico-style proxy ARP, a Docker-style FORWARD policy made with
iptables-nft, bridge flags, a wrong static neighbour, a port that is down).
The real `ping` is the oracle; the prediction must agree and, when it fails,
name the decision the case breaks."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import new_prefix
from tests.labs import ping
from vethtrace.diagnose.path import Flow, predict
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged


def sh(ns: str, *lines: str) -> None:
    for line in lines:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", line],
            check=True,
            capture_output=True,
            text=True,
        )


@contextmanager
def namespaces(*names: str) -> Iterator[dict[str, str]]:
    prefix = new_prefix()
    real = {n: f"{prefix}{n}" for n in names}
    try:
        for ns in real.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            sh(ns, "ip link set lo up")
        yield real
    finally:
        for ns in real.values():
            subprocess.run(["ip", "netns", "del", ns], check=False)


def veth(a: str, an: str, b: str, bn: str) -> None:
    sh(a, f"ip link add {an} type veth peer name {bn} netns {b}", f"ip link set {an} up")
    sh(b, f"ip link set {bn} up")


def nat_node(ns: dict[str, str], masquerade: bool) -> None:
    """pod -- cni0 bridge on node -- eth0 -- outside, which has no route to the pods."""
    sh(
        ns["node"],
        "ip link add cni0 type bridge",
        "ip link set cni0 up",
        "ip addr add 10.244.0.1/24 dev cni0",
        "sysctl -qw net.ipv4.ip_forward=1",
    )
    veth(ns["node"], "vethpod", ns["pod"], "eth0")
    sh(ns["node"], "ip link set vethpod master cni0")
    veth(ns["node"], "eth0", ns["out"], "eth0")
    sh(ns["node"], "ip addr add 192.168.50.1/24 dev eth0")
    sh(ns["out"], "ip addr add 192.168.50.2/24 dev eth0")
    sh(ns["pod"], "ip addr add 10.244.0.2/24 dev eth0", "ip route add default via 10.244.0.1")
    if masquerade:
        sh(
            ns["node"],
            "nft 'add table ip nat; add chain ip nat post { type nat hook postrouting "
            "priority 100; }; add rule ip nat post ip saddr 10.244.0.0/24 oifname eth0 masquerade'",
        )


def calico(ns: dict[str, str], proxy_arp: bool) -> None:
    """A routed veth: pod default via 169.254.1.1 onlink, answered by the host veth's proxy ARP."""
    veth(ns["host"], "cali0", ns["pod"], "eth0")
    veth(ns["host"], "eth1", ns["out"], "eth0")
    sh(
        ns["host"],
        "ip addr add 192.168.60.1/24 dev eth1",
        "ip route add default via 192.168.60.2",
        "ip route add 10.65.0.5/32 dev cali0",
        "sysctl -qw net.ipv4.ip_forward=1",
        f"sysctl -qw net.ipv4.conf.cali0.proxy_arp={int(proxy_arp)}",
    )
    sh(
        ns["out"],
        "ip addr add 192.168.60.2/24 dev eth0",
        "ip route add 10.65.0.0/16 via 192.168.60.1",
    )
    sh(
        ns["pod"],
        "ip addr add 10.65.0.5/32 dev eth0",
        "ip route add 169.254.1.1 dev eth0 scope link",
        "ip route add default via 169.254.1.1 dev eth0",
    )


def docker(ns: dict[str, str], accept: bool) -> None:
    sh(
        ns["host"],
        "ip link add docker0 type bridge",
        "ip link set docker0 up",
        "ip addr add 172.18.0.1/16 dev docker0",
        "sysctl -qw net.ipv4.ip_forward=1",
    )
    veth(ns["host"], "vethc", ns["ctr"], "eth0")
    sh(ns["host"], "ip link set vethc master docker0")
    veth(ns["host"], "eth0", ns["out"], "eth0")
    sh(ns["host"], "ip addr add 192.168.70.1/24 dev eth0")
    sh(ns["out"], "ip addr add 192.168.70.2/24 dev eth0")
    sh(ns["ctr"], "ip addr add 172.18.0.2/16 dev eth0", "ip route add default via 172.18.0.1")
    rules = [
        "iptables -P FORWARD DROP",
        "iptables -A FORWARD -o docker0 -d 172.18.0.0/16 -j ACCEPT",
        "iptables -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o docker0 -j MASQUERADE",
    ]
    if accept:
        rules.append("iptables -A FORWARD -i docker0 ! -o docker0 -j ACCEPT")
    sh(ns["host"], *rules)


def bridged(ns: dict[str, str], how: str) -> None:
    sh(ns["sw"], "ip link add br0 type bridge", "ip link set br0 up")
    veth(ns["sw"], "veth-a", ns["a"], "eth0")
    veth(ns["sw"], "veth-b", ns["b"], "eth0")
    sh(ns["sw"], "ip link set veth-a master br0", "ip link set veth-b master br0")
    sh(ns["a"], "ip addr add 10.0.9.1/24 dev eth0")
    sh(ns["b"], "ip addr add 10.0.9.2/24 dev eth0")
    if how == "flood-off":
        # b's IPv6 start-up frames were learned already: forget them
        sh(
            ns["sw"],
            "bridge link set dev veth-b flood off learning off",
            "bridge fdb show dev veth-b | awk '/master/ && !/permanent/ {print $1}' | "
            "while read m; do bridge fdb del $m dev veth-b master; done",
        )
    elif how == "wrong-mac":
        sh(ns["a"], "ip neigh add 10.0.9.2 lladdr 02:00:00:00:00:99 dev eth0 nud permanent")
    elif how == "port-down":
        sh(ns["sw"], "ip link set veth-b down")


CASES = {
    # name: (namespaces, build, source, destination, ok, words the failing hop must carry)
    "masquerade": (
        ("pod", "node", "out"),
        lambda n: nat_node(n, True),
        "pod",
        "192.168.50.2",
        True,
        "",
    ),
    "no-masquerade": (
        ("pod", "node", "out"),
        lambda n: nat_node(n, False),
        "pod",
        "192.168.50.2",
        False,
        "masquerade",
    ),
    "calico-proxy-arp": (
        ("pod", "host", "out"),
        lambda n: calico(n, True),
        "pod",
        "192.168.60.2",
        True,
        "",
    ),
    "calico-no-proxy-arp": (
        ("pod", "host", "out"),
        lambda n: calico(n, False),
        "pod",
        "192.168.60.2",
        False,
        "proxy_arp",
    ),
    "docker-accept": (
        ("ctr", "host", "out"),
        lambda n: docker(n, True),
        "ctr",
        "192.168.70.2",
        True,
        "",
    ),
    "docker-no-accept": (
        ("ctr", "host", "out"),
        lambda n: docker(n, False),
        "ctr",
        "192.168.70.2",
        False,
        "policy drop",
    ),
    "flood-off": (
        ("sw", "a", "b"),
        lambda n: bridged(n, "flood-off"),
        "a",
        "10.0.9.2",
        False,
        "flood off",
    ),
    "wrong-mac": (
        ("sw", "a", "b"),
        lambda n: bridged(n, "wrong-mac"),
        "a",
        "10.0.9.2",
        False,
        "02:00:00:00:00:99",
    ),
    "port-down": (
        ("sw", "a", "b"),
        lambda n: bridged(n, "port-down"),
        "a",
        "10.0.9.2",
        False,
        "veth-b",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(case: str) -> None:
    names, build, source, dst, ok, words = CASES[case]
    with namespaces(*names) as ns:
        build(ns)
        topo = discover(list(ns.values()))
        pred = predict(topo, Flow(ns[source], dst))
        real = any(ping(ns[source], dst) for _ in range(3 if ok else 1))
        text = "\n".join(
            f"{h.status} {h.where} {h.decision} | {h.source} | {h.cause}"
            for h in pred.forward + pred.reply
        )
        assert real == ok, f"{case}: the kernel says {real}"
        assert pred.ok == real, f"{case}: predicted {pred.ok}\n{text}"
        if not ok:
            fail = pred.first_failure
            assert fail is not None, text
            blob = f"{fail.decision} {fail.source} {fail.cause} {' '.join(fail.fix)}"
            assert words in blob, f"{case}: {words!r} not in the failing hop\n{text}"
