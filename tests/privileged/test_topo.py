"""`discover()` against independent readings of the same namespaces.

A lab built here with `ip`/`bridge`/`nft` (every fact we check is set on
purpose: STP, port flags, a tap, vxlan, macvlan, bond, static FDB and
neighbour entries, blackhole and gateway routes, sysctls, an nftables forward
drop, a veth pair inside one namespace, and a veth whose peer lives in a
namespace held only by a process), plus the LAB engineer's `seed` scenario.
Each fact in the Topology is compared with what `ip -j -d`, `bridge -j`,
`ethtool -S` and the sysctl files say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import new_prefix
from vethtrace.model import IfaceKey, Topology
from vethtrace.topology import capture, discover, l2_domain, owner_of_ip, route_lookup, snapshot
from vethtrace.topology.namespaces import enumerate_namespaces

pytestmark = pytest.mark.privileged


def sh(*cmd: str, check: bool = True, input: str | None = None) -> str:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, check=check, input=input
    ).stdout


def ipj(ns: str, *args: str) -> list[dict]:
    out = sh("ip", "-j", "-d", "-n", ns, *args)
    return json.loads(out) if out.strip() else []


def bridgej(ns: str, *args: str) -> list[dict]:
    out = sh("bridge", "-j", "-n", ns, *args)
    return json.loads(out) if out.strip() else []


NFT_RULES = """
table inet vtt {
  chain fw_chain { type filter hook forward priority 0; policy drop; }
  chain in_chain { type filter hook input priority 0; policy accept; ip saddr 10.61.9.9 drop; }
}
"""


@contextmanager
def topo_lab(p: str) -> Iterator[dict[str, str | int]]:
    """Build the lab under prefix p; always remove it (and the holding process)."""
    hub, a, b, c, d = f"{p}hub", f"{p}a", f"{p}b", f"{p}c", f"{p}d"
    sleeper = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    names = [hub, a, b, c, d]
    try:
        for n in names:
            sh("ip", "netns", "add", n)
        pid_ns = f"/proc/{sleeper.pid}/ns/net"
        for _ in range(100):  # wait until unshare has exec'd sleep in its namespace
            if os.stat(pid_ns).st_ino != os.stat("/proc/self/ns/net").st_ino:
                break
            time.sleep(0.01)
        hub_cmds = f"""
link add br0 type bridge stp_state 0
link add br1 type bridge stp_state 1
link set br0 up
link set br1 up
addr add 10.61.0.1/24 dev br0
addr add fd61::1/64 dev br0 nodad
link add va type veth peer name eth0 netns {a}
link add vb type veth peer name eth0 netns {b}
link add vp type veth peer name ceth0 netns {pid_ns}
link add vd type veth peer name vd-peer
link set va master br0 up
link set vb master br0 up
link set vp master br0 up
link set vd master br1 up
link set vd-peer up
link set dev va type bridge_slave learning off hairpin on
link set dev vb type bridge_slave isolated on
link add ifb0 type ifb
link add mv0 link br1 type macvlan mode bridge
link add mv1 link vd-peer type macvlan mode bridge
link set mv1 netns {b}
link add vx0 type vxlan id 42 dstport 4789 local 10.61.0.1
tuntap add dev tap0 mode tap
link set lo up
neigh add 10.61.0.77 lladdr 02:00:00:00:00:77 dev br0 nud permanent
route add 10.62.0.0/24 via 10.61.0.2
route add blackhole 10.63.0.0/24
route add 10.64.0.0/24 dev br0 metric 50
"""
        sh("ip", "-n", hub, "-batch", "-", input=hub_cmds)
        # Both ends get ifindex 2 in fresh namespaces: the kernel then omits IFLA_LINK.
        sh("ip", "-n", c, "link", "add", "e0", "type", "veth", "peer", "name", "e0", "netns", d)
        sh("bridge", "-n", hub, "fdb", "add", "02:00:00:00:00:99", "dev", "va", "master", "static")
        for ns, addr in ((a, "10.61.0.2/24"), (b, "10.61.0.3/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", a, "link", "set", "lo", "up")
        sh("ip", "-n", a, "route", "add", "default", "via", "10.61.0.1")
        sh("nsenter", f"--net={pid_ns}", "ip", "addr", "add", "10.61.0.4/24", "dev", "ceth0")
        sh("nsenter", f"--net={pid_ns}", "ip", "link", "set", "ceth0", "up")
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.br0.arp_ignore", "1"),
            ("net.ipv4.conf.br0.proxy_arp", "1"),
        ):
            sh("ip", "netns", "exec", hub, "sysctl", "-qw", f"{key}={value}")
        sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=2")
        # read through RTM_GETNETCONF (NETCONFA_PROXY_NEIGH), compared with the file
        sh("ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.conf.all.proxy_arp=1")
        sh("ip", "netns", "exec", hub, "nft", "-f", "-", input=NFT_RULES)
        # A resolved neighbour and learned FDB entries (retry: the ports may still settle).
        for _ in range(5):
            r = subprocess.run(["ip", "netns", "exec", a, "ping", "-c1", "-W1", "10.61.0.1"],
                               capture_output=True, check=False)  # fmt: skip
            if r.returncode == 0:
                break
        yield {"hub": hub, "a": a, "b": b, "c": c, "d": d, "pid": sleeper.pid}
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, str | int]]:
    with topo_lab(new_prefix()) as names:
        yield names


@pytest.fixture(scope="module")
def topo(lab: dict[str, str | int]) -> Topology:
    return discover()


# --- independent comparisons ----------------------------------------------------------


def _kind(link: dict) -> str:
    info = link.get("linkinfo", {})
    kind = info.get("info_kind")
    if kind is None:
        return "loopback" if link.get("link_type") == "loopback" else "device"
    if kind == "tun":
        return info.get("info_data", {}).get("type", "tun")
    return kind


def check_links(topo: Topology, ns_name: str) -> None:
    ns = topo.netns_by_name(ns_name)
    assert ns is not None, ns_name
    links = ipj(ns_name, "link", "show")
    assert sorted(i.name for i in ns.interfaces) == sorted(lk["ifname"] for lk in links)
    for lk in links:
        iface = ns.iface(lk["ifindex"])
        assert iface is not None and iface.name == lk["ifname"]
        assert iface.kind == _kind(lk), lk["ifname"]
        assert iface.mtu == lk["mtu"]
        assert iface.admin_up == ("UP" in lk["flags"]), lk["ifname"]
        assert iface.oper_state == lk["operstate"], lk["ifname"]
        if iface.admin_up:  # the kernel only reports LOWER_UP (carrier) for up devices
            assert iface.carrier == ("LOWER_UP" in lk["flags"]), lk["ifname"]
        assert iface.mac == lk.get("address"), lk["ifname"]
        master = ns.iface(iface.master).name if iface.master else None  # type: ignore[union-attr]
        assert master == lk.get("master"), lk["ifname"]
        slave = lk.get("linkinfo", {}).get("info_slave_data")
        if lk.get("linkinfo", {}).get("info_slave_kind") == "bridge":
            port = iface.bridge_port
            assert port is not None
            assert port.state == slave["state"]
            assert port.isolated == slave["isolated"]
            assert port.hairpin == slave["hairpin"]
            assert port.learning == slave["learning"]
            assert port.flood == slave["flood"]
        else:
            assert iface.bridge_port is None
        if iface.kind == "bridge":
            data = lk["linkinfo"]["info_data"]
            assert iface.bridge_stp == (data["stp_state"] != 0)
            assert iface.vlan_filtering == bool(data["vlan_filtering"])
        if iface.kind == "veth":
            # ip names the peer's ifindex (link_index, or the `link` name when local)
            if "link_netnsid" in lk:
                assert iface.peer is not None or iface.peer_state is not None
                if iface.peer is not None:
                    assert iface.peer.ifindex == lk.get("link_index", lk["ifindex"])
            else:
                peer = ns.iface_by_name(lk["link"])
                assert peer is not None and iface.peer == peer.key
            stats = sh("ip", "netns", "exec", ns_name, "ethtool", "-S", lk["ifname"])
            peer_ifindex = int(stats.split("peer_ifindex:")[1].split()[0])
            assert iface.peer is not None and iface.peer.ifindex == peer_ifindex


def check_addresses(topo: Topology, ns_name: str) -> None:
    ns = topo.netns_by_name(ns_name)
    assert ns is not None
    for entry in ipj(ns_name, "addr", "show"):
        iface = ns.iface(entry["ifindex"])
        assert iface is not None
        want = [
            (a["local"], a["prefixlen"], 4 if a["family"] == "inet" else 6, a["scope"])
            for a in entry["addr_info"]
        ]
        got = [(a.address, a.prefixlen, a.family, a.scope) for a in iface.addresses]
        assert sorted(got) == sorted(want), iface.name


def check_routes(topo: Topology, ns_name: str) -> None:
    ns = topo.netns_by_name(ns_name)
    assert ns is not None
    names = {i.key.ifindex: i.name for i in ns.interfaces}
    want = []
    for fam, ver in (("-4", 4), ("-6", 6)):
        for r in ipj(ns_name, fam, "route", "show", "table", "main"):
            want.append(
                (
                    ver,
                    r["dst"],
                    r.get("dev"),
                    r.get("gateway"),
                    r.get("type", "unicast"),
                    r.get("prefsrc"),
                    r.get("metric", 0),
                )
            )
    got = [
        (r.family, r.dst, names.get(r.oif) if r.oif else None, r.gateway, r.kind, r.prefsrc,
         r.metric)
        for r in ns.routes
    ]  # fmt: skip
    assert sorted(got, key=str) == sorted(want, key=str)


def check_neighbours(topo: Topology, ns_name: str) -> None:
    def reading() -> list:
        return sorted(
            (n["dst"], n["dev"], n.get("lladdr"), ",".join(n["state"]))
            for n in ipj(ns_name, "neigh", "show", "nud", "all")
            if "proxy" not in n
        )

    def extract(t: Topology) -> list:
        ns = t.netns_by_name(ns_name)
        assert ns is not None
        names = {i.key.ifindex: i.name for i in ns.interfaces}
        return sorted((n.address, names[n.ifindex], n.lladdr, n.state) for n in ns.neighbours)

    assert extract(topo) == reading()


def check_fdb(topo: Topology, ns_name: str) -> None:
    def reading() -> list:
        return sorted(
            (
                e["mac"],
                e["ifname"],
                e.get("master"),
                e.get("vlan"),
                tuple(([e["state"]] if e.get("state") else []) + e.get("flags", [])),
            )
            for e in bridgej(ns_name, "fdb", "show")
        )

    def extract(t: Topology) -> list:
        ns = t.netns_by_name(ns_name)
        assert ns is not None
        names = {i.key.ifindex: i.name for i in ns.interfaces}
        return sorted(
            (e.mac, names[e.ifindex], names.get(e.master) if e.master else None, e.vlan,
             tuple(e.flags))
            for e in ns.fdb
        )  # fmt: skip

    ns = topo.netns_by_name(ns_name)
    assert ns is not None
    if any(i.kind in ("bridge", "vxlan") for i in ns.interfaces):
        assert extract(topo) == reading()
    else:
        # No forwarding database here: not asked (what `bridge fdb` lists is the
        # devices' own multicast filter, "self" entries of no bridge).
        assert ns.fdb == []
        assert all("master" not in flags for *_rest, flags in reading())


def check_sysctls(topo: Topology, ns_name: str) -> None:
    ns = topo.netns_by_name(ns_name)
    assert ns is not None
    expected = {
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_filter",
        "net.ipv4.conf.all.arp_accept",
        "net.ipv4.conf.all.proxy_arp",
        "net.ipv6.conf.all.forwarding",
    }
    assert expected <= set(ns.sysctls)
    for key, value in ns.sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        assert sh("ip", "netns", "exec", ns_name, "cat", path).strip() == value, key
    for iface in ns.interfaces:
        for key, value in iface.sysctls.items():
            path = f"/proc/sys/net/ipv4/conf/{iface.name}/{key}"
            assert sh("ip", "netns", "exec", ns_name, "cat", path).strip() == value


def check_settled(check, topo: Topology, ns_name: str) -> None:
    """Run a check; when it fails, retry on fresh readings for a few seconds: a
    freshly built lab still changes on its own (linkwatch updates operstate up to
    a second late, IGMP adds multicast neighbours), and two readings taken at
    different moments may then disagree without either being wrong."""
    for _ in range(10):
        try:
            check(topo, ns_name)
            return
        except AssertionError:
            time.sleep(0.3)
            topo = discover([ns_name])
    check(topo, ns_name)


ALL_CHECKS = [check_links, check_addresses, check_routes, check_neighbours, check_fdb,
              check_sysctls]  # fmt: skip


@pytest.mark.parametrize("which", ["hub", "a", "b", "c"])
@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_facts_match_iproute2(topo: Topology, lab: dict, which: str, check) -> None:
    check_settled(check, topo, lab[which])


def test_lab_features_seen(topo: Topology, lab: dict) -> None:
    """The features set on purpose show up with the values set (not just 'equal to ip')."""
    hub = topo.netns_by_name(lab["hub"])
    assert hub is not None
    kinds = {i.name: i.kind for i in hub.interfaces}
    assert kinds["br0"] == kinds["br1"] == "bridge"
    assert (kinds["ifb0"], kinds["mv0"], kinds["vx0"], kinds["tap0"]) == (
        "ifb", "macvlan", "vxlan", "tap")  # fmt: skip
    br0, br1 = hub.iface_by_name("br0"), hub.iface_by_name("br1")
    assert br0 and br1 and br0.bridge_stp is False and br1.bridge_stp is True
    va, vb = hub.iface_by_name("va"), hub.iface_by_name("vb")
    assert va and va.bridge_port and va.bridge_port.hairpin and not va.bridge_port.learning
    assert vb and vb.bridge_port and vb.bridge_port.isolated
    # lower devices, in the same namespace and across (mv1 was moved to b)
    mv0, vd_peer = hub.iface_by_name("mv0"), hub.iface_by_name("vd-peer")
    assert mv0 and br1 and mv0.link == br1.key
    b = topo.netns_by_name(lab["b"])
    mv1 = b.iface_by_name("mv1") if b else None
    assert mv1 and vd_peer and mv1.kind == "macvlan" and mv1.link == vd_peer.key
    assert hub.sysctls["net.ipv4.ip_forward"] == "1"
    assert hub.sysctls["net.ipv4.conf.all.rp_filter"] == "2"
    assert br0.sysctls["arp_ignore"] == "1" and br0.sysctls["proxy_arp"] == "1"
    a = topo.netns_by_name(lab["a"])
    assert a is not None and a.sysctls["net.ipv4.conf.all.arp_ignore"] == "2"
    assert any(n.address == "10.61.0.77" and n.state == "PERMANENT" for n in hub.neighbours)
    assert any(e.mac == "02:00:00:00:00:99" and "static" in e.flags for e in hub.fdb)
    kinds_routes = {r.dst: r.kind for r in hub.routes}
    assert kinds_routes["10.63.0.0/24"] == "blackhole"
    fw = hub.firewall
    assert fw["forward_drop"] is True and fw["input_drop"] is True
    chains = {c["chain"]: c for c in fw["chains"]}
    assert chains["fw_chain"]["policy"] == "drop" and chains["in_chain"]["drop_rules"] == 1
    assert a.firewall["forward_drop"] is False


def test_veth_peers_across_namespaces(topo: Topology, lab: dict) -> None:
    hub, a = topo.netns_by_name(lab["hub"]), topo.netns_by_name(lab["a"])
    assert hub and a
    va, eth0 = hub.iface_by_name("va"), a.iface_by_name("eth0")
    assert va and eth0 and va.peer == eth0.key and eth0.peer == va.key
    vd, vd_peer = hub.iface_by_name("vd"), hub.iface_by_name("vd-peer")
    assert vd and vd_peer and vd.peer == vd_peer.key and vd_peer.peer == vd.key
    c, d = topo.netns_by_name(lab["c"]), topo.netns_by_name(lab["d"])
    assert c and d
    ce0, de0 = c.iface_by_name("e0"), d.iface_by_name("e0")
    assert ce0 and de0 and ce0.key.ifindex == de0.key.ifindex == 2
    assert ce0.peer == de0.key and de0.peer == ce0.key


def test_peer_in_process_held_namespace(topo: Topology, lab: dict) -> None:
    pid = lab["pid"]
    held = next(ns for ns in topo.namespaces if pid in ns.pids)
    assert held.named is False
    assert held.name == f"pid:{pid}(sleep)"
    assert held.inode == os.stat(f"/proc/{pid}/ns/net").st_ino
    ceth0 = held.iface_by_name("ceth0")
    hub = topo.netns_by_name(str(lab["hub"]))
    assert hub is not None and ceth0 is not None
    vp = hub.iface_by_name("vp")
    assert vp is not None and vp.peer == ceth0.key and ceth0.peer == vp.key
    assert [a.cidr for a in ceth0.addresses if a.family == 4] == ["10.61.0.4/24"]
    assert topo.label(vp.peer) == f"pid:{pid}(sleep)/ceth0"


def test_helpers_on_live_lab(topo: Topology, lab: dict) -> None:
    found = owner_of_ip(topo, "10.61.0.2")
    assert found is not None and found[0].name == lab["a"] and found[1].name == "eth0"
    hit = route_lookup(topo, str(lab["a"]), "10.99.1.1")
    assert hit is not None and hit.gateway == "10.61.0.1"
    hub = topo.netns_by_name(str(lab["hub"]))
    assert hub is not None
    hit = route_lookup(topo, hub, "10.62.0.9")
    br0 = hub.iface_by_name("br0")
    assert hit and br0 and hit.oif == br0.key and hit.gateway == "10.61.0.2"
    a_eth0 = found[1]
    dom = l2_domain(topo, a_eth0.key)
    b = topo.netns_by_name(str(lab["b"]))
    assert b is not None
    b_eth0 = b.iface_by_name("eth0")
    assert b_eth0 and b_eth0.key in dom and br0.key in dom.bridges
    vd = hub.iface_by_name("vd")
    assert vd and vd.key not in dom  # br1 is another broadcast domain


def test_selection_and_cli(lab: dict, cli) -> None:
    out = cli("topo", "-n", str(lab["a"]))
    assert out.returncode == 0, out.stderr
    assert str(lab["a"]) in out.stdout and "outside the selection" in out.stdout
    assert f"eth0  veth  UP  10.61.0.2/24  ⇄ {lab['hub']}/va" in out.stdout
    assert str(lab["b"]) not in out.stdout  # not a direct veth neighbour of a
    bad = cli("topo", "-n", "vtt-no-such-namespace")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no network namespace" in bad.stderr
    topo = discover([str(lab["a"])])
    names = {ns.name: ns.partial for ns in topo.namespaces}
    assert names == {lab["a"]: False, lab["hub"]: True}


def test_json_dot_svg(lab: dict, cli, tmp_path) -> None:
    out = cli("topo", "--json", "-n", str(lab["hub"]))
    assert out.returncode == 0, out.stderr
    topo = snapshot.loads(out.stdout)
    assert snapshot.loads(snapshot.dumps(topo)) == topo
    assert {ns.name for ns in topo.namespaces} >= {lab["hub"], lab["a"], lab["b"]}
    dot = cli("topo", "--dot", "-n", str(lab["hub"]))
    assert dot.returncode == 0 and dot.stdout.startswith("graph vethtrace {")
    svg = tmp_path / "t.svg"
    res = cli("topo", "--svg", str(svg), "-n", str(lab["hub"]))
    assert res.returncode == 0, res.stderr
    text = ET.parse(svg).getroot().itertext()
    joined = " ".join(text)
    assert str(lab["hub"]) in joined and "br0" in joined


def test_vanishing_namespaces_become_notes(prefix: str) -> None:
    """A namespace deleted, and a process exiting, between enumeration and capture."""
    gone = f"{prefix}gone"
    sh("ip", "netns", "add", gone)
    sleeper = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    try:
        for _ in range(100):
            if os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
                break
            time.sleep(0.01)
        notes: list[str] = []
        refs = enumerate_namespaces(notes)
        assert any(r.name == gone for r in refs)
        assert any(sleeper.pid in r.pids for r in refs)
    finally:
        sh("ip", "netns", "del", gone, check=False)
        sleeper.kill()
        sleeper.wait()
    cap = capture.capture(refs)
    assert any(gone in n and "vanished" in n for n in cap.notes)
    assert any(f"pid:{sleeper.pid}" in n and "vanished" in n for n in cap.notes)
    assert all(raw.name != gone for raw in cap.namespaces)


def test_seed_lab(prefix: str) -> None:
    from tests.labs import built_lab

    with built_lab("seed", prefix) as seed:
        topo = discover([seed.ns("host"), seed.ns("song")])
        for ns in (seed.ns("host"), seed.ns("song")):
            for check in ALL_CHECKS:
                check_settled(check, topo, ns)
    host = topo.netns_by_name(seed.ns("host"))
    song = topo.netns_by_name(seed.ns("song"))
    assert host and song
    veth0, veth1 = host.iface_by_name("veth0"), song.iface_by_name("veth1")
    assert veth0 and veth1 and veth0.peer == veth1.key and veth1.peer == veth0.key
    assert veth0.bridge_port is not None and veth0.addresses
    assert IfaceKey(song.inode, veth1.key.ifindex) == veth1.key


def record_samples(out_dir: str = "samples") -> None:
    """Re-record samples/netlink/{topo-lab,seed}.json (raw dumps the unit tests replay)
    and the matching samples/snapshots/*.json topologies:

        sudo .venv/bin/python -m tests.privileged.test_topo
    """
    from tests.labs import built_lab
    from vethtrace.topology import build

    def write(name: str, names: list[str]) -> None:
        cap = snapshot.record(names)
        with open(f"{out_dir}/netlink/{name}.json", "w") as f:
            f.write(snapshot.capture_to_json(cap) + "\n")
        snapshot.save(build.build(cap), f"{out_dir}/snapshots/{name}.json")

    with topo_lab("vtrec-") as lab:
        names = [str(lab[k]) for k in ("hub", "a", "b", "c", "d")] + [f"pid:{lab['pid']}"]
        write("topo-lab", names)
    with built_lab("seed", "vtrec-") as seed:
        write("seed", [seed.ns("host"), seed.ns("song")])


if __name__ == "__main__":
    record_samples()


def test_peer_in_namespace_nobody_names(prefix: str) -> None:
    """The peer's namespace is held only by a file descriptor (no name, no process
    of its own): the veth is reported with peer_state 'unknown', not paired wrongly."""
    seen, hidden = f"{prefix}seen", f"{prefix}hidden"
    sh("ip", "netns", "add", seen)
    sh("ip", "netns", "add", hidden)
    fd = os.open(f"/run/netns/{hidden}", os.O_RDONLY)
    try:
        sh("ip", "-n", seen, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
           "netns", hidden)  # fmt: skip
        sh("ip", "netns", "del", hidden)  # now only our fd keeps it alive
        topo = discover([seen])
        ns = topo.netns_by_name(seen)
        assert ns is not None
        v0 = ns.iface_by_name("v0")
        assert v0 is not None and v0.peer is None and v0.peer_state == "unknown"
        out = subprocess.run(
            ["ip", "-j", "-d", "-n", seen, "link", "show", "v0"], capture_output=True, text=True
        )
        assert "link_netnsid" in json.loads(out.stdout)[0]  # the kernel does know an nsid
    finally:
        os.close(fd)
        subprocess.run(["ip", "netns", "del", seen], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", hidden], capture_output=True, check=False)


def test_stale_run_netns_entry_is_a_note(prefix: str) -> None:
    """A file in /run/netns that is no namespace (left by a failed `ip netns add`)."""
    path = f"/run/netns/{prefix}stale"
    open(path, "w").close()
    try:
        topo = discover()
    finally:
        os.unlink(path)
    assert topo.netns_by_name(f"{prefix}stale") is None
    assert f"netns {prefix}stale: cannot enter (not a namespace: a stale entry?)" in topo.notes
