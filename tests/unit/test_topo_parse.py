"""Recorded netlink dumps (samples/netlink/, see tests/privileged/test_topo.py
record_samples) turned into a Topology without root.

Our struct-based decoder is checked message by message against pyroute2's
decoding of the very same bytes, then peer resolution, the query helpers and
the renderers run on the result. Peer-resolution edge cases are made by
editing the capture the way the kernel would present them.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tests.conftest import REPO
from vethtrace.model import IfaceKey, Topology, to_dict
from vethtrace.render import topo_dot, topo_tree
from vethtrace.topology import (
    build,
    l2_domain,
    nlmsg,
    owner_of_ip,
    owners_of_ip,
    parse,
    route_lookup,
    snapshot,
)
from vethtrace.topology.capture import RawCapture

SAMPLES = REPO / "samples" / "netlink"


def load(name: str) -> RawCapture:
    return snapshot.capture_from_json((SAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def cap() -> RawCapture:
    return load("topo-lab")


@pytest.fixture(scope="module")
def topo(cap: RawCapture) -> Topology:
    return build.build(cap)


def ns_of(topo: Topology, short: str):
    ns = topo.netns_by_name(f"vtrec-{short}")
    assert ns is not None
    return ns


def held(topo: Topology):
    return next(ns for ns in topo.namespaces if not ns.named)


def each(data: bytes, cls):
    for mtype, _f, off, end in nlmsg.messages(data):
        if mtype in (nlmsg.NLMSG_DONE, nlmsg.NLMSG_ERROR):
            continue
        msg = cls(data[off - 16 : end])
        msg.decode()
        yield msg


# --- our decoder vs pyroute2's, on the same bytes ------------------------------


@pytest.mark.parametrize("name", ["topo-lab", "seed"])
def test_links_decode_like_pyroute2(name: str) -> None:
    cap = load(name)
    for raw in cap.namespaces:
        ours = {lk.iface.key.ifindex: lk for lk in parse.links(raw.links, raw.inode)}
        theirs = [m for m in each(raw.links, ifinfmsg) if m["header"]["type"] == 16]
        assert len(theirs) == len(ours) > 0
        for m in theirs:
            lk = ours[m["index"]]
            iface = lk.iface
            assert iface.name == m.get_attr("IFLA_IFNAME")
            assert iface.mtu == m.get_attr("IFLA_MTU")
            assert iface.mac == m.get_attr("IFLA_ADDRESS")
            assert iface.master == m.get_attr("IFLA_MASTER")
            assert iface.admin_up == bool(m["flags"] & 1)
            assert iface.oper_state == m.get_attr("IFLA_OPERSTATE")
            assert iface.carrier == bool(m.get_attr("IFLA_CARRIER"))
            assert lk.link == m.get_attr("IFLA_LINK")
            assert lk.link_nsid == m.get_attr("IFLA_LINK_NETNSID")
            info = m.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            assert iface.kind == (
                {"tun": "tap"}.get(kind, kind)
                if kind
                else ("loopback" if m["flags"] & 8 else "device")
            )
            slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
            if slave is not None and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
                port = iface.bridge_port
                assert port is not None
                states = ["disabled", "listening", "learning", "forwarding", "blocking"]
                assert port.state == states[slave.get_attr("IFLA_BRPORT_STATE")]
                assert port.isolated == bool(slave.get_attr("IFLA_BRPORT_ISOLATED"))
                assert port.hairpin == bool(slave.get_attr("IFLA_BRPORT_MODE"))
                assert port.learning == bool(slave.get_attr("IFLA_BRPORT_LEARNING"))
                assert port.flood == bool(slave.get_attr("IFLA_BRPORT_UNICAST_FLOOD"))
            if kind == "bridge":
                data = info.get_attr("IFLA_INFO_DATA")
                assert iface.bridge_stp == bool(data.get_attr("IFLA_BR_STP_STATE"))


@pytest.mark.parametrize("name", ["topo-lab", "seed"])
def test_addresses_routes_neighbours_fdb_decode_like_pyroute2(name: str) -> None:
    cap = load(name)
    for raw in cap.namespaces:
        ours_a = sorted(
            (ifindex, a.address, a.prefixlen)
            for ifindex, addrs in parse.addresses(raw.addrs).items()
            for a in addrs
        )
        theirs_a = sorted(
            (m["index"], m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"), m["prefixlen"])
            for m in each(raw.addrs, ifaddrmsg)
            if m["header"]["type"] == 20
        )
        assert ours_a == theirs_a
        theirs_r = [
            (
                m.get_attr("RTA_DST") or "default",
                m["dst_len"],
                m.get_attr("RTA_OIF"),
                m.get_attr("RTA_GATEWAY"),
                m.get_attr("RTA_PRIORITY") or 0,
            )
            for m in each(raw.routes, rtmsg)
            if m["header"]["type"] == 24 and (m.get_attr("RTA_TABLE") or m["table"]) == 254
        ]
        ours_r = [
            (r.dst.split("/")[0], int(r.dst.split("/")[1]) if "/" in r.dst else 0, r.oif,
             r.gateway, r.metric)
            for r in parse.routes(raw.routes)
        ]  # fmt: skip
        assert ours_r == theirs_r
        ours_n = [(n.ifindex, n.address, n.lladdr) for n in parse.neighbours(raw.neigh)]
        theirs_n = [
            (m["ifindex"], m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR"))
            for m in each(raw.neigh, ndmsg)
            if m["header"]["type"] == 28 and not m["flags"] & nlmsg.NTF_PROXY
        ]
        assert ours_n == theirs_n
        ours_f = [(e.ifindex, e.mac, e.master, e.vlan) for e in parse.fdb(raw.fdb)]
        theirs_f = [
            (m["ifindex"], m.get_attr("NDA_LLADDR"), m.get_attr("NDA_MASTER"),
             m.get_attr("NDA_VLAN"))
            for m in each(raw.fdb, ndmsg)
            if m["header"]["type"] == 28
        ]  # fmt: skip
        assert ours_f == theirs_f


# --- the topology built from the recording ---------------------------------------


def test_peers_resolved_across_namespaces(topo: Topology) -> None:
    hub, a, c, d = ns_of(topo, "hub"), ns_of(topo, "a"), ns_of(topo, "c"), ns_of(topo, "d")
    pairs = {
        (topo.label(i.key), topo.label(i.peer))
        for ns in topo.namespaces
        for i in ns.interfaces
        if i.peer is not None
    }
    pid_ns = held(topo)
    expected = {
        ("vtrec-hub/va", "vtrec-a/eth0"),
        ("vtrec-hub/vb", "vtrec-b/eth0"),
        ("vtrec-hub/vp", f"{pid_ns.name}/ceth0"),
        ("vtrec-hub/vd", "vtrec-hub/vd-peer"),
        ("vtrec-c/e0", "vtrec-d/e0"),
    }
    assert pairs == expected | {(b, a_) for a_, b in expected}
    assert all(i.peer_state is None for ns in topo.namespaces for i in ns.interfaces)
    # equal ifindexes on both ends (no IFLA_LINK in the dump) still pair up
    assert c.iface_by_name("e0").key.ifindex == d.iface_by_name("e0").key.ifindex  # type: ignore[union-attr]
    assert hub.iface_by_name("va").peer == a.iface_by_name("eth0").key  # type: ignore[union-attr]


def test_process_held_namespace_labelled(topo: Topology) -> None:
    pid_ns = held(topo)
    assert pid_ns.name.startswith("pid:") and pid_ns.name.endswith("(sleep)")
    assert pid_ns.pids and pid_ns.name == f"pid:{pid_ns.pids[0]}(sleep)"


def test_bridges_ports_and_flags(topo: Topology) -> None:
    hub = ns_of(topo, "hub")
    br0, br1 = hub.iface_by_name("br0"), hub.iface_by_name("br1")
    assert br0 and br1 and br0.bridge_stp is False and br1.bridge_stp is True
    ports = sorted(i.name for i in hub.interfaces if i.master == br0.key.ifindex)
    assert ports == ["va", "vb", "vp"]
    va, vb, vd = hub.iface_by_name("va"), hub.iface_by_name("vb"), hub.iface_by_name("vd")
    assert va and va.bridge_port and va.bridge_port.hairpin and not va.bridge_port.learning
    assert vb and vb.bridge_port and vb.bridge_port.isolated
    assert vd and vd.bridge_port and vd.bridge_port.state in ("listening", "learning")
    assert br0.sysctls["arp_ignore"] == "1" and br0.sysctls["proxy_arp"] == "1"
    assert hub.sysctls["net.ipv4.ip_forward"] == "1"
    assert hub.sysctls["net.ipv4.conf.all.rp_filter"] == "2"
    assert any(e.mac == "02:00:00:00:00:99" and "static" in e.flags for e in hub.fdb)
    assert hub.firewall["forward_drop"] and hub.firewall["input_drop"]
    assert not ns_of(topo, "a").firewall["forward_drop"]


def test_snapshot_round_trip_exact(topo: Topology) -> None:
    text = snapshot.dumps(topo)
    again = snapshot.loads(text)
    assert again == topo
    assert snapshot.dumps(again) == text
    assert snapshot.loads(snapshot.dumps(topo, indent=None)) == topo


def test_stored_snapshots_match_recorded_dumps() -> None:
    """samples/snapshots/{seed,topo-lab}.json are what the recorded dumps build to."""
    for name in ("seed", "topo-lab"):
        stored = snapshot.load(str(REPO / "samples" / "snapshots" / f"{name}.json"))
        assert to_dict(stored) == to_dict(build.build(load(name)))


# --- peer resolution edge cases ----------------------------------------------------


def _without(cap: RawCapture, inode: int) -> RawCapture:
    out = copy.deepcopy(cap)
    out.namespaces = [r for r in out.namespaces if r.inode != inode]
    out.nsids = {k: v for k, v in out.nsids.items() if inode not in k}
    return out


def test_peer_in_namespace_we_cannot_see(cap: RawCapture, topo: Topology) -> None:
    pid_ns = held(topo)
    t = build.build(_without(cap, pid_ns.inode))
    vp = ns_of(t, "hub").iface_by_name("vp")
    assert vp and vp.peer is None and vp.peer_state == "unknown"
    assert "peer in a namespace we cannot see" in _plain_tree(t)


def _nsid_list(*nsids: int) -> bytes:
    """An RTM_GETNSID dump's bytes, as the kernel writes it, listing these nsids."""
    out = b""
    for nsid in nsids:
        body = nlmsg.RTGENMSG.pack(0) + nlmsg.nla(nlmsg.NETNSA_NSID, nsid.to_bytes(4, "little"))
        out += nlmsg.request(nlmsg.RTM_NEWNSID, body, flags=nlmsg.NLM_F_MULTI)
    return out + nlmsg.request(nlmsg.NLMSG_DONE, b"\0\0\0\0", flags=nlmsg.NLM_F_MULTI)


def test_peer_whose_namespace_is_gone(cap: RawCapture, topo: Topology) -> None:
    """vp's peer namespace is not among those we see, and the hub no longer has
    an nsid for it (the kernel drops the ids of a dead namespace): gone."""
    gone = _without(cap, held(topo).inode)
    hub = next(raw for raw in gone.namespaces if raw.name == "vtrec-hub")
    nsid_of = {lk.iface.name: lk.link_nsid for lk in parse.links(hub.links, hub.inode)}
    assert parse.nsid_list(_nsid_list(7, 9)) == {7, 9}
    hub.nsids = _nsid_list(nsid_of["va"], nsid_of["vb"])  # type: ignore[arg-type]
    vp = ns_of(build.build(gone), "hub").iface_by_name("vp")
    assert vp and vp.peer is None and vp.peer_state == "netns-gone"
    hub.nsids = _nsid_list(nsid_of["va"], nsid_of["vb"], nsid_of["vp"])  # type: ignore[arg-type]
    vp = ns_of(build.build(gone), "hub").iface_by_name("vp")
    assert vp and vp.peer is None and vp.peer_state == "unknown"


def test_ambiguous_pairing_settled_by_nsid(cap: RawCapture) -> None:
    """Two namespaces look like the peer of hub/va (same ifindexes); the nsid the
    kernel gave for each decides, and without any answer we say 'unknown'."""
    twin = copy.deepcopy(cap)
    a = next(r for r in twin.namespaces if r.name == "vtrec-a")
    fake = dataclasses.replace(a, inode=a.inode + 1_000_000, name="vtrec-a-twin")
    fake.links = a.links  # same bytes: eth0 at the same ifindex, pointing at va
    twin.namespaces.append(fake)
    hub = next(r for r in twin.namespaces if r.name == "vtrec-hub")
    twin.nsids[(hub.inode, fake.inode)] = 999  # not the nsid va carries
    t = build.build(twin)
    va = ns_of(t, "hub").iface_by_name("va")
    assert va and va.peer == IfaceKey(a.inode, 2)
    del twin.nsids[(hub.inode, a.inode)]
    del twin.nsids[(hub.inode, fake.inode)]
    t = build.build(twin)
    va = ns_of(t, "hub").iface_by_name("va")
    assert va and va.peer is None and va.peer_state == "unknown"
    assert any("ambiguous" in n for n in t.notes)


def test_old_capture_without_nsid_answers_trusts_unique_pairing(cap: RawCapture) -> None:
    bare = copy.deepcopy(cap)
    bare.nsids = {}
    t = build.build(bare)
    assert ns_of(t, "hub").iface_by_name("va").peer == ns_of(t, "a").iface_by_name("eth0").key  # type: ignore[union-attr]


def test_one_end_asked_settles_both_ends(cap: RawCapture, topo: Topology) -> None:
    """nsid_queries asks about a veth pairing from one end only (the hub, with
    more veths, asks about a and b; they ask nothing back): the hub's answers
    settle the leaves' ends too, and a wrong answer leaves them unconfirmed."""
    wanted, _listing = build.nsid_queries(build.parse_links(cap))
    hub, a = ns_of(topo, "hub").inode, ns_of(topo, "a").inode
    assert a in wanted[hub] and hub not in wanted.get(a, set())
    one_sided = copy.deepcopy(cap)
    one_sided.nsids = {
        pair: nsid for pair, nsid in cap.nsids.items() if pair[1] in wanted.get(pair[0], set())
    }
    assert (a, hub) not in one_sided.nsids and (hub, a) in one_sided.nsids
    t = build.build(one_sided)
    assert to_dict(t.namespaces) == to_dict(topo.namespaces)
    eth0 = ns_of(t, "a").iface_by_name("eth0")
    assert eth0 and eth0.peer == ns_of(t, "hub").iface_by_name("va").key  # type: ignore[union-attr]
    one_sided.nsids[(hub, a)] = 999  # the hub's answer: its va does not lead to a
    t = build.build(one_sided)
    eth0 = ns_of(t, "a").iface_by_name("eth0")
    assert eth0 and eth0.peer is None


# --- helpers other stages use ----------------------------------------------------------


def test_owner_of_ip(topo: Topology) -> None:
    ns, iface = owner_of_ip(topo, "10.61.0.4")  # type: ignore[misc]
    assert not ns.named and iface.name == "ceth0"
    assert owner_of_ip(topo, "10.61.0.1", netns="vtrec-a") is None
    assert [n.name for n, _i in owners_of_ip(topo, "10.61.0.2")] == ["vtrec-a"]
    assert owner_of_ip(topo, "fd61::1") is not None
    assert owner_of_ip(topo, "192.0.2.200") is None


def test_route_lookup(topo: Topology) -> None:
    a, hub = ns_of(topo, "a"), ns_of(topo, "hub")
    eth0, br0 = a.iface_by_name("eth0"), hub.iface_by_name("br0")
    assert eth0 and br0
    hit = route_lookup(topo, "vtrec-a", "8.8.8.8")
    assert hit and hit.oif == eth0.key and hit.gateway == "10.61.0.1" and hit.route
    assert hit.route.dst == "default"
    hit = route_lookup(topo, "vtrec-a", "10.61.0.3")  # on-link beats default
    assert hit and hit.oif == eth0.key and hit.gateway is None
    hit = route_lookup(topo, "vtrec-a", "10.61.0.2")
    assert hit and hit.local and hit.oif == eth0.key
    assert route_lookup(topo, "vtrec-b", "8.8.8.8") is None  # b has no default route
    hit = route_lookup(topo, hub.inode, "10.63.0.5")
    assert hit and hit.kind == "blackhole"
    hit = route_lookup(topo, hub, "10.64.0.5")
    assert hit and hit.oif == br0.key and hit.route and hit.route.metric == 50
    hit = route_lookup(topo, hub, "10.62.0.9")
    assert hit and hit.gateway == "10.61.0.2"
    assert route_lookup(topo, "no-such-netns", "10.0.0.1") is None


def test_l2_domain(topo: Topology) -> None:
    a, b, hub = ns_of(topo, "a"), ns_of(topo, "b"), ns_of(topo, "hub")
    eth0 = a.iface_by_name("eth0")
    assert eth0
    dom = l2_domain(topo, eth0.key)
    labels = {topo.label(k) for k in dom.members}
    pid_ns = held(topo)
    assert labels == {
        "vtrec-a/eth0",
        "vtrec-hub/va",
        "vtrec-hub/br0",
        "vtrec-hub/vb",
        "vtrec-b/eth0",
        "vtrec-hub/vp",
        f"{pid_ns.name}/ceth0",
    }
    assert {topo.label(k) for k in dom.bridges} == {"vtrec-hub/br0"}
    assert {topo.label(k) for k in dom.ports} == {"vtrec-hub/va", "vtrec-hub/vb", "vtrec-hub/vp"}
    assert b.iface_by_name("eth0").key in dom.endpoints  # type: ignore[union-attr]
    vd = hub.iface_by_name("vd")
    assert vd and vd.key not in dom
    assert {topo.label(k) for k in l2_domain(topo, vd.key).members} == {
        "vtrec-hub/vd",
        "vtrec-hub/vd-peer",
        "vtrec-hub/br1",
    }


# --- rendering -----------------------------------------------------------------------


def _plain_tree(topo: Topology) -> str:
    import io

    from rich.console import Console

    # as make_console() sets it up for a pipe: no wrapping, so long lines stay long
    console = Console(width=100, no_color=True, soft_wrap=True, file=io.StringIO())
    console.print(topo_tree.tree(topo))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_tree_shows_pairs_ports_and_problems(topo: Topology) -> None:
    text = _plain_tree(topo)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert "vethtrace topo  6 namespaces" in lines[0]
    assert "│   │   ├── va  veth  UP  hairpin,no-learning  ⇄ vtrec-a/eth0" in text
    assert "│   │   └── vd  veth  UP  port listening  ⇄ vtrec-hub/vd-peer" in text or (
        "port learning" in text
    )
    assert "br1  bridge  NO-CARRIER  stp on" in text
    assert "ifb0  ifb  DOWN" in text
    assert "mv0  macvlan  DOWN  on vtrec-hub/br1" in text
    assert "ip_forward · nft forward can drop" in text
    pid_ns = held(topo)
    assert "ceth0  veth  UP  10.61.0.4/24  ⇄ vtrec-hub/vp" in text
    assert f"{pid_ns.name}  netns {pid_ns.inode}  pids {pid_ns.pids[0]}" in text


def test_tree_partial_selection(cap: RawCapture) -> None:
    part = copy.deepcopy(cap)
    for raw in part.namespaces:
        if raw.name != "vtrec-a":
            raw.partial = True
    t = build.build(part)
    text = _plain_tree(t)
    assert "vtrec-hub  netns" in text and "(outside the selection: peers only)" in text
    assert "va  veth  UP  hairpin,no-learning  ⇄ vtrec-a/eth0" in text
    assert "vb  veth" not in text  # not a peer of the selection


def test_seed_tree_flags_address_on_port() -> None:
    t = build.build(load("seed"))
    text = _plain_tree(t)
    assert "veth0  veth  UP  192.168.122.101/24 (IP on a port!)  ⇄ vtrec-song/veth1" in text
    assert "lo  loopback  DOWN" in text


def test_dot_clusters_nodes_and_veth_edges(topo: Topology) -> None:
    dot = topo_dot.dot(topo)
    assert dot.startswith("graph vethtrace {") and dot.rstrip().endswith("}")
    assert dot.count("subgraph cluster_") == len(topo.namespaces)
    assert dot.count('label="veth"') == 5  # one edge per pair, not per end
    hub, a = ns_of(topo, "hub"), ns_of(topo, "a")
    va, eth0 = hub.iface_by_name("va"), a.iface_by_name("eth0")
    assert va and eth0
    edge = f"if_{va.key.netns}_{va.key.ifindex} -- if_{eth0.key.netns}_{eth0.key.ifindex}"
    other = f"if_{eth0.key.netns}_{eth0.key.ifindex} -- if_{va.key.netns}_{va.key.ifindex}"
    assert edge in dot or other in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
def test_dot_renders_with_graphviz(topo: Topology, tmp_path: Path) -> None:
    out = tmp_path / "t.svg"
    topo_dot.render(topo_dot.dot(topo), str(out))
    text = " ".join(ET.parse(out).getroot().itertext())
    assert "vtrec-hub" in text and "ceth0" in text
    proc = subprocess.run(["dot", "-Tsvg"], input="graph {", text=True, capture_output=True)
    assert proc.returncode != 0  # and our wrapper turns such failures into UserError:
    from vethtrace.errors import UserError

    with pytest.raises(UserError, match="dot failed"):
        topo_dot.render("graph {", str(out))


def test_missing_peer_drawn_as_ghost(cap: RawCapture, topo: Topology) -> None:
    t = build.build(_without(cap, held(topo).inode))
    dot = topo_dot.dot(t)
    assert "? unknown" in dot


def test_fast_json_is_the_to_dict_document(topo: Topology) -> None:
    """snapshot.dumps encodes dataclasses through vars(); it must stay the very
    document model.to_dict describes (field names and order are the schema)."""
    import json

    doc = json.loads(snapshot.dumps(topo, indent=None))
    assert doc.pop("format") == "vethtrace-topology" and doc.pop("version") == 1
    assert doc == to_dict(topo)
    assert list(doc["namespaces"][0]) == list(to_dict(topo)["namespaces"][0])


# --- namespace naming ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("0::/system.slice/docker-" + "a" * 64 + ".scope\n", ("docker", "a" * 64)),
        ("12:cpu:/docker/" + "b" * 64 + "\n", ("docker", "b" * 64)),
        ("0::/machine.slice/libpod-" + "c" * 64 + ".scope/container\n", ("podman", "c" * 64)),
        (
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
            "cri-containerd-" + "d" * 64 + ".scope\n",
            ("containerd", "d" * 64),
        ),
        ("0::/lxc.payload.web1/init.scope\n", ("lxc", "web1")),
        ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ],
)
def test_container_id_from_cgroup(cgroup: str, expected) -> None:
    from vethtrace.topology.namespaces import container_id

    assert container_id(cgroup) == expected


def test_lookup_by_name_label_path_and_inode() -> None:
    from vethtrace.topology.namespaces import NsRef, lookup

    refs = [
        NsRef(11, "root", "/proc/1/fd/3"),
        NsRef(12, "vt-a", "/run/netns/vt-a"),
        NsRef(13, "pid:77(sleep)", "/proc/77/ns/net", named=False, pids=[77]),
    ]
    assert lookup(refs, "vt-a") is refs[1]
    assert lookup(refs, "/run/netns/vt-a") is refs[1]
    assert lookup(refs, "pid:77(sleep)") is refs[2]
    assert lookup(refs, "13") is refs[2]
    assert lookup(refs, "vt-b") is None
