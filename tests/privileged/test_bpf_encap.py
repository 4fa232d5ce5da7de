"""The probes follow a packet into a VXLAN tunnel (issue #19): on the
overlay lab a pod's ping is encapsulated by node-a's vxlan0 in UDP 4789 to
node-b's underlay address and decapsulated by node-b's. The outer headers are
checked against the lab's declared VTEPs and VNI (read with iproute2, not our
discovery), the inner ICMP against the ping we sent; the filter must select
the tunnelled datagrams by the inner packet alone, and correlate must make
the whole crossing one path."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.labs import built_lab, ipv4_of, overlay_on_port
from vethtrace.collect.bpf import BpfCollector
from vethtrace.correlate import correlate
from vethtrace.model import ProbeEvent
from vethtrace.netns import inode_of

pytestmark = pytest.mark.privileged


def _vxlan(ns: str) -> dict:
    out = subprocess.run(["ip", "-d", "-j", "-n", ns, "link", "show", "vxlan0"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)[0]["linkinfo"]["info_data"]


def _trace_ping(lab, flt: str, src: str, dst_ip: str) -> list[ProbeEvent]:
    inodes = [inode_of(ns) for ns in lab.namespaces]
    events: list[ProbeEvent] = []
    with BpfCollector(flt, netns_inodes=inodes) as col:
        col.start()
        subprocess.run(["ip", "netns", "exec", src, "ping", "-n", "-q", "-c1", "-W2",
                        "-p", "5a", dst_ip], capture_output=True, check=False)  # fmt: skip
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            events += col.poll(100)
            if any(e.packet and e.packet.icmp_type == 0 and e.netns == inode_of(src)
                   for e in events if e.point == "netif_receive_skb"):  # fmt: skip
                break
        events += col.drain()
    return events


@pytest.mark.parametrize("flt", ["icmp", "icmp and host 10.244.1.2"])
def test_inner_icmp_seen_in_the_tunnel_with_vni(prefix: str, flt: str) -> None:
    with built_lab("overlay-vxlan", prefix) as lab:
        pod_a, node_a, node_b, underlay = (lab.ns(n) for n in ("pod-a", "node-a", "node-b",
                                                                "underlay"))  # fmt: skip
        vx = _vxlan(node_a)
        vni, port = vx["id"], vx["port"]
        vtep_a, vtep_b = ipv4_of(node_a, "eth0"), ipv4_of(node_b, "eth0")
        pod_b_ip = ipv4_of(lab.ns("pod-b"), "eth0")
        ns_of = {inode_of(underlay): "underlay", inode_of(node_a): "node-a",
                 inode_of(node_b): "node-b"}  # fmt: skip
        events = _trace_ping(lab, flt, pod_a, pod_b_ip)

    def echo(e: ProbeEvent) -> bool:
        p = e.packet
        return bool(p and p.icmp_type == 8 and p.ip_dst == pod_b_ip)

    req = [e for e in events if echo(e)]
    enc = [e for e in req if e.packet and e.packet.encap]
    # the inner ICMP (not the outer UDP) describes every tunnelled event
    assert enc, [(e.point, e.ifname) for e in req]
    for e in enc:
        en = e.packet.encap  # type: ignore[union-attr]
        assert (en.kind, en.vni, en.src, en.dst, en.dport) == ("vxlan", vni, vtep_a, vtep_b, port)
    where = {(ns_of.get(e.netns), e.ifname) for e in enc}
    # node-a's eth0 sends it, the underlay bridge carries it, node-b's eth0 receives it
    assert ("node-a", "eth0") in where and ("node-b", "eth0") in where
    assert any(n == "underlay" for n, _ in where)
    # and vxlan0 on both nodes sees the plain frame (before / after the tunnel)
    plain = {(ns_of.get(e.netns), e.ifname) for e in req if not e.packet.encap}  # type: ignore[union-attr]
    assert ("node-a", "vxlan0") in plain and ("node-b", "vxlan0") in plain

    # one path: pod-a ... vxlan0, the tunnel, ... pod-b's eth0, tunnel hops marked
    paths = [p for p in correlate(events) if p.kind == "echo"]
    assert len(paths) == 1, [[(h.netns, h.interface) for h in p.hops] for p in paths]
    hops = paths[0].hops
    marked = [h for h in hops if f"\u2282vxlan {vtep_b} vni {vni}" in h.note]
    assert marked and all(h.interface != "vxlan0" for h in marked)
    order = [h.interface for h in hops]
    first_vx = order.index("vxlan0")
    assert hops.index(marked[0]) > first_vx  # encapsulated after node-a's vxlan0
    assert any(h.interface == "vxlan0" for h in hops[hops.index(marked[-1]):])  # decapsulated


def _trace_ping_ports(lab, flt: str, src: str, dst_ip: str, ports: list[int]) -> list[ProbeEvent]:
    inodes = [inode_of(ns) for ns in lab.namespaces]
    events: list[ProbeEvent] = []
    with BpfCollector(flt, netns_inodes=inodes, vxlan_ports=ports) as col:
        col.start()
        subprocess.run(["ip", "netns", "exec", src, "ping", "-n", "-q", "-c1", "-W2",
                        dst_ip], capture_output=True, check=False)  # fmt: skip
        time.sleep(0.3)
        events += col.poll(100) + col.drain()
    return events


def test_vxlan_on_a_non_default_port(prefix: str, tmp_path) -> None:
    """The overlay on flannel's UDP 8472: the VXLAN ports are map data filled
    from the discovered devices, so the inner ping is decoded there and the
    inner filter selects the tunnelled datagrams; with only the default port
    they stay plain UDP to 8472, which `icmp` does not select."""
    from vethtrace.collect.runcfg import vxlan_ports_of
    from vethtrace.topology import discover

    with built_lab(str(overlay_on_port(tmp_path, 8472)), prefix) as lab:
        pod_a, node_a, node_b = (lab.ns(n) for n in ("pod-a", "node-a", "node-b"))
        assert _vxlan(node_a)["port"] == 8472
        pod_b_ip = ipv4_of(lab.ns("pod-b"), "eth0")
        ports = vxlan_ports_of(discover(list(lab.namespaces)))
        assert ports == [8472, 8472]
        decoded = _trace_ping_ports(lab, "icmp", pod_a, pod_b_ip, ports)
        default_only = _trace_ping_ports(lab, "icmp", pod_a, pod_b_ip, [])
        underlay = {inode_of(node_a), inode_of(node_b), inode_of(lab.ns("underlay"))}
        node_b_ino = inode_of(node_b)
        vteps = {ipv4_of(node_a, "eth0"), ipv4_of(node_b, "eth0")}

    enc = [e for e in decoded if e.packet and e.packet.encap]
    assert enc and all(e.packet.encap.dport == 8472 and e.packet.encap.dst in vteps  # type: ignore[union-attr]
                       and e.packet.icmp_type in (0, 8) for e in enc)  # fmt: skip
    assert {e.netns for e in enc} <= underlay
    assert any(e.ifname == "eth0" and e.netns == node_b_ino for e in enc)
    # the default port alone: no VXLAN decoded, and `icmp` sees no tunnelled datagram
    assert not [e for e in default_only if e.packet and e.packet.encap]
    assert not [e for e in default_only if e.packet and e.packet.ip_proto == 17]
    assert [e for e in default_only if e.packet and e.packet.icmp_type == 8]  # the plain hops
