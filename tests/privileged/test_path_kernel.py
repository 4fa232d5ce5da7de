"""The path model against the kernel on single decisions a review found modelled
wrongly: each case builds the smallest topology where the kernel's rule and the
model's disagreed, and the kernel (a real ping, or `ip route get`) is the oracle.

- arp_ignore=3 answers for any address of the namespace whose scope is not host
  (arp.c arp_ignore: inet_confirm_addr with in_dev NULL), not only the
  receiving interface's;
- a bridge floods its own stack's broadcasts even to ports with bcast_flood off
  (br_flood skips such ports only when skb->dev is not the bridge);
- an ip rule `goto` whose target priority holds no rule is skipped
  (fib_rules_lookup: ctarget NULL -> continue), not taken to the next priority;
- a route without gateway and without src takes the device's first primary
  address (inet_select_addr with dst 0), not one in the destination's subnet.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.labs import ping
from tests.privileged.test_path_cases import namespaces, sh, veth
from vethtrace.diagnose.path import Flow, predict
from vethtrace.diagnose.path.route import lookup, select_source
from vethtrace.model import Namespace
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged


def _text(pred) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(
        f"{h.status} {h.where} {h.decision} | {h.source} | {h.cause}"
        for h in pred.forward + pred.reply
    )


def _agree(ns: dict[str, str], src: str, dst: str) -> bool:
    """The kernel's answer (ping) and the model's must agree; returns the answer."""
    topo = discover(list(ns.values()))
    pred = predict(topo, Flow(ns[src], dst))
    real = any(ping(ns[src], dst) for _ in range(2))
    assert pred.ok == real, f"kernel says {real}, model {pred.ok}\n{_text(pred)}"
    return real


def _two_ports(ns: dict[str, str], net: str) -> None:
    """br0 in sw with ports veth-a and veth-b to a (net.1) and b (net.2)."""
    sh(ns["sw"], "ip link add br0 type bridge", "ip link set br0 up")
    veth(ns["sw"], "veth-a", ns["a"], "eth0")
    veth(ns["sw"], "veth-b", ns["b"], "eth0")
    sh(ns["sw"], "ip link set veth-a master br0", "ip link set veth-b master br0")
    sh(ns["a"], f"ip addr add {net}.1/24 dev eth0")
    sh(ns["b"], f"ip addr add {net}.2/24 dev eth0")


def _a_r_b(ns: dict[str, str], a: str, ra: str, rb: str, b: str) -> None:
    """a's eth0 -- ra on r -- rb on r -- b's eth0, with those addresses (CIDR or '')."""
    veth(ns["a"], "eth0", ns["r"], "ra")
    veth(ns["b"], "eth0", ns["r"], "rb")
    for n, dev, addr in (("a", "eth0", a), ("r", "ra", ra), ("r", "rb", rb), ("b", "eth0", b)):
        if addr:
            sh(ns[n], f"ip addr add {addr} dev {dev}")


@pytest.mark.parametrize(("scope", "answered"), [("global", True), ("host", False)])
def test_arp_ignore_3_answers_for_any_non_host_address(scope: str, answered: bool) -> None:
    with namespaces("a", "b") as ns:
        veth(ns["a"], "eth0", ns["b"], "eth0")
        sh(ns["a"], "ip addr add 10.31.0.1/24 dev eth0", "ip route add 10.31.9.9/32 dev eth0")
        sh(
            ns["b"],
            "ip addr add 10.31.0.2/24 dev eth0",
            f"ip addr add 10.31.9.9/32 dev lo scope {scope}",
            "sysctl -qw net.ipv4.conf.all.arp_ignore=3",
        )
        assert _agree(ns, "a", "10.31.9.9") is answered


def test_bridge_floods_its_own_broadcast_past_bcast_flood_off() -> None:
    with namespaces("sw", "a") as ns:
        sh(
            ns["sw"],
            "ip link add br0 type bridge",
            "ip link set br0 up",
            "ip addr add 10.32.0.1/24 dev br0",
        )
        veth(ns["sw"], "veth-a", ns["a"], "eth0")
        sh(ns["sw"], "ip link set veth-a master br0", "bridge link set dev veth-a bcast_flood off")
        sh(ns["a"], "ip addr add 10.32.0.2/24 dev eth0")
        assert _agree(ns, "sw", "10.32.0.2") is True
        # a's broadcasts come in on a port: the flag does not apply to the bridge's stack
        assert _agree(ns, "a", "10.32.0.1") is True


def _route_get(ns: str, dst: str) -> tuple[int, str]:
    p = subprocess.run(
        ["ip", "-n", ns, "route", "get", dst], capture_output=True, text=True, check=False
    )
    return p.returncode, p.stdout + p.stderr


def _routing(ns: dict[str, str], *lines: str) -> Namespace:
    """a (eth0 to b) configured by lines, as discovered."""
    veth(ns["a"], "eth0", ns["b"], "eth0")
    sh(ns["a"], *lines)
    return next(n for n in discover([ns["a"]]).namespaces if n.name == ns["a"])


def test_unresolved_rule_goto_is_skipped() -> None:
    with namespaces("a", "b") as ns:
        a = _routing(
            ns,
            "ip addr add 10.33.0.1/24 dev eth0",
            "ip rule add pref 100 goto 200",  # no rule has priority 200: unresolved
            "ip rule add pref 150 lookup 100",
            "ip route add blackhole 10.33.0.2 table 100",
        )
        rc, out = _route_get(ns["a"], "10.33.0.2")
        assert rc != 0, f"the kernel routes it: {out}"  # blackhole: EINVAL
        assert lookup(a, "10.33.0.2").kind == "blackhole"


def test_source_of_a_route_without_gateway_is_the_first_primary_address() -> None:
    with namespaces("a", "b") as ns:
        a = _routing(
            ns,
            "ip addr add 10.34.0.1/24 dev eth0",
            "ip addr add 10.35.0.1/24 dev eth0",
            "ip route add 10.35.0.64/26 dev eth0",
            "ip route add 10.36.0.0/24 via 10.35.0.9",
        )
        for dst in ("10.35.0.77", "10.36.0.5"):
            rc, out = _route_get(ns["a"], dst)
            assert rc == 0, out
            kernel = out.split(" src ")[1].split()[0]
            assert select_source(a, lookup(a, dst), dst) == kernel, out


def _counters(ns: str) -> dict[str, int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True, text=True, check=True
    ).stdout
    return {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) >= 2}


def test_forwarding_is_decided_before_the_reverse_path_check() -> None:
    """ip_route_input_slow refuses to forward (IN_DEV_FORWARD) before
    __mkroute_input validates the source: with forwarding off and a strict
    rp_filter that would fail too, the kernel counts InAddrErrors, not
    IPReversePathFilter, and the model must name forwarding."""
    with namespaces("a", "r", "b") as ns:
        _a_r_b(ns, "10.41.0.2/24", "10.41.0.1/24", "10.42.0.1/24", "10.42.0.2/24")
        sh(ns["a"], "ip route add default via 10.41.0.1")
        sh(ns["b"], "ip route add default via 10.42.0.1")
        sh(
            ns["r"],
            "ip route add 10.41.0.2/32 via 10.42.0.2",  # the way back leaves by rb
            "sysctl -qw net.ipv4.ip_forward=0",
            "sysctl -qw net.ipv4.conf.all.rp_filter=1",
        )
        # r's ARP would fail the same rp_filter (arp_process routes the request
        # as input): a knows r's MAC already, so only the IP decisions remain
        mac = subprocess.run(
            ["ip", "-n", ns["r"], "-br", "link", "show", "ra"], capture_output=True, text=True
        ).stdout.split()[2]
        sh(ns["a"], f"ip neigh add 10.41.0.1 lladdr {mac} dev eth0 nud permanent")
        before = _counters(ns["r"])
        assert _agree(ns, "a", "10.42.0.2") is False
        after = _counters(ns["r"])
        grew = {k for k in ("IpInAddrErrors", "TcpExtIPReversePathFilter")
                if after.get(k, 0) > before.get(k, 0)}  # fmt: skip
        assert grew == {"IpInAddrErrors"}, grew
        pred = predict(discover(list(ns.values())), Flow(ns["a"], "10.42.0.2"))
        fail = pred.first_failure
        assert fail is not None and fail.step == "forward", _text(pred)


def _asymmetric(ns: dict[str, str], addressed: bool) -> None:
    """a -- (ra) r (rb) -- b; r holds 10.52.0.1 on lo and routes a's subnet back via b."""
    ra = "10.99.0.1/24" if addressed else ""
    _a_r_b(ns, "10.51.0.2/24", ra, "10.53.0.1/24", "10.53.0.2/24")
    sh(ns["a"], "ip route add 10.52.0.1/32 dev eth0")
    sh(
        ns["r"],
        "ip addr add 10.52.0.1/32 dev lo",
        "ip route add 10.51.0.0/24 via 10.53.0.2",
        "sysctl -qw net.ipv4.conf.all.rp_filter=2",
    )


def _static_neigh(ns: dict[str, str], frm: str, dev: str, to: str, to_dev: str, ip: str) -> None:
    mac = subprocess.run(
        ["ip", "-n", ns[to], "-br", "link", "show", to_dev], capture_output=True, text=True
    ).stdout.split()[2]
    sh(ns[frm], f"ip neigh add {ip} lladdr {mac} dev {dev} nud permanent")


@pytest.mark.parametrize("addressed", [False, True])
def test_loose_rp_filter_drops_on_a_device_without_address(addressed: bool) -> None:
    """__fib_validate_source: loose mode accepts a route back through another
    device only when the receiving device holds an IPv4 address (no_addr ->
    last_resort -> e_rpf). The kernel's IPReversePathFilter counter is the oracle."""
    with namespaces("a", "r", "b") as ns:
        _asymmetric(ns, addressed)
        _static_neigh(ns, "a", "eth0", "r", "ra", "10.52.0.1")
        before = _counters(ns["r"])
        ping(ns["a"], "10.52.0.1")
        dropped = _counters(ns["r"]).get("TcpExtIPReversePathFilter", 0) > before.get(
            "TcpExtIPReversePathFilter", 0
        )
        assert dropped is not addressed
        pred = predict(discover(list(ns.values())), Flow(ns["a"], "10.52.0.1"))
        fail = pred.first_failure
        assert (fail is not None and fail.step == "rp_filter") is dropped, _text(pred)


def test_arp_request_fails_the_reverse_path_check() -> None:
    """arp_process routes the request (ip_route_input_noref), so rp_filter
    judges its sender: with the way back to a leaving by rb, r never answers."""
    with namespaces("a", "r", "b") as ns:
        _asymmetric(ns, True)
        sh(ns["r"], "ip addr add 10.51.0.1/24 dev ra", "ip route add 10.51.0.2/32 via 10.53.0.2")
        sh(ns["r"], "sysctl -qw net.ipv4.conf.all.rp_filter=1")
        assert not ping(ns["a"], "10.51.0.1")
        neigh = subprocess.run(
            ["ip", "-n", ns["a"], "neigh", "show", "10.51.0.1"], capture_output=True, text=True
        ).stdout
        assert "lladdr" not in neigh, neigh  # the kernel: no ARP answer
        pred = predict(discover(list(ns.values())), Flow(ns["a"], "10.51.0.1"))
        fail = pred.first_failure
        assert fail is not None and fail.step == "arp", _text(pred)
        assert "rp_filter" in fail.source, _text(pred)


def test_a_router_asks_arp_with_its_own_address() -> None:
    """arp_solicit sends a forwarded packet's ARP request from the router's own
    address on that link (inet_select_addr), not the packet's foreign source:
    srv's strict rp_filter, which drops c's echo request, does not judge the ARP."""
    with namespaces("c", "r", "srv", "gw") as ns:
        veth(ns["r"], "r-c", ns["c"], "eth0")
        veth(ns["r"], "r-s", ns["srv"], "eth1")
        veth(ns["srv"], "eth0", ns["gw"], "gw0")
        sh(ns["c"], "ip addr add 10.61.3.2/24 dev eth0", "ip route add default via 10.61.3.1")
        sh(
            ns["r"],
            "ip addr add 10.61.3.1/24 dev r-c",
            "ip addr add 10.61.2.1/24 dev r-s",
            "sysctl -qw net.ipv4.ip_forward=1",
        )
        sh(
            ns["srv"],
            "ip addr add 10.61.2.2/24 dev eth1",
            "ip addr add 10.61.1.2/24 dev eth0",
            "ip route add default via 10.61.1.1",
            "sysctl -qw net.ipv4.conf.all.rp_filter=1",
        )
        sh(ns["gw"], "ip addr add 10.61.1.1/24 dev gw0")
        before = _counters(ns["srv"])
        assert not ping(ns["c"], "10.61.2.2")
        after = _counters(ns["srv"])
        key = "TcpExtIPReversePathFilter"
        assert after.get(key, 0) > before.get(key, 0)  # the echo was dropped by rp_filter
        pred = predict(discover(list(ns.values())), Flow(ns["c"], "10.61.2.2"))
        fail = pred.first_failure
        assert fail is not None and fail.step == "rp_filter", _text(pred)
        assert fail.netns == ns["srv"] and fail.interface == "eth1", _text(pred)


def _snat_router(ns: dict[str, str], rules: str) -> None:
    """a (10.71.0.2) -- r -- b (10.72.0.2); b routes nothing beyond its subnet."""
    _a_r_b(ns, "10.71.0.2/24", "10.71.0.1/24", "10.72.0.1/24", "10.72.0.2/24")
    sh(ns["a"], "ip route add default via 10.71.0.1")
    sh(
        ns["r"],
        "sysctl -qw net.ipv4.ip_forward=1",
        f"nft '{rules}'",
    )


def test_the_first_nat_binding_wins() -> None:
    """nf_nat_inet_fn runs a hook's nat chains in priority order until one binds
    the flow; later nat chains never see it. The second chain's address is one
    b cannot answer: only the first binding lets the ping through."""
    with namespaces("a", "r", "b") as ns:
        _snat_router(
            ns,
            "add table ip n1; add chain ip n1 post { type nat hook postrouting priority 100; }; "
            "add rule ip n1 post oifname rb snat to 10.72.0.1; "
            "add table ip n2; add chain ip n2 post { type nat hook postrouting priority 110; }; "
            "add rule ip n2 post oifname rb snat to 10.99.9.9",
        )
        assert _agree(ns, "a", "10.72.0.2") is True


def test_nat_chains_run_at_the_nat_core_priority() -> None:
    """nf_nat_register_fn hangs nat chains off the NAT core's own hook (postrouting:
    NF_IP_PRI_NAT_SRC = 100), whatever priority they declare, and the packet is
    rewritten there: a filter chain at 150 sees the new source even when the nat
    chain says 200 (and drops it here), one at 50 the original."""
    with namespaces("a", "r", "b") as ns:
        _snat_router(
            ns,
            "add table ip n; add chain ip n post { type nat hook postrouting priority 200; }; "
            "add rule ip n post oifname rb snat to 10.72.0.1; "
            "add chain ip n early { type filter hook postrouting priority 50; }; "
            "add rule ip n early ip saddr 10.72.0.1 icmp type echo-request drop; "
            "add chain ip n late { type filter hook postrouting priority 150; }; "
            "add rule ip n late ip saddr 10.71.0.2 icmp type echo-request drop",
        )
        assert _agree(ns, "a", "10.72.0.2") is True
        sh(ns["r"], "nft add rule ip n late ip saddr 10.72.0.1 icmp type echo-request drop")
        assert _agree(ns, "a", "10.72.0.2") is False


@pytest.mark.parametrize("hook", ["prerouting", "postrouting"])
def test_br_netfilter_passes_bridged_ip_through_every_ip_hook(hook: str) -> None:
    """br_netfilter hands a bridged IPv4 packet to the ip hooks prerouting
    (br_nf_pre_routing), forward and postrouting (br_nf_post_routing), not only
    forward: a drop in the bridge namespace's ip prerouting/postrouting chain
    stops a ping between two ports."""
    with namespaces("sw", "a", "b") as ns:
        _two_ports(ns, "10.81.0")
        on = subprocess.run(
            ["ip", "netns", "exec", ns["sw"], "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if on != "1":
            pytest.skip("br_netfilter is not active in new namespaces on this host")
        assert _agree(ns, "a", "10.81.0.2") is True
        sh(
            ns["sw"],
            f"nft 'add table ip t; add chain ip t c {{ type filter hook {hook} priority 0; }}; "
            "add rule ip t c ip saddr 10.81.0.1 icmp type echo-request drop'",
        )
        assert _agree(ns, "a", "10.81.0.2") is False


def test_veth_mtu_slack_and_fragmented_echo_replies() -> None:
    """A 1500-byte packet into a veth whose peer has MTU 1496 passes
    (is_skb_forwardable allows mtu + hard_header_len + VLAN_HLEN), and b's
    1500-byte echo reply out of its 1496-byte eth0 is fragmented, never refused
    (the ICMP socket sends with IP_PMTUDISC_DONT): the ping with DF succeeds."""
    with namespaces("a", "b") as ns:
        veth(ns["a"], "eth0", ns["b"], "eth0")
        sh(ns["a"], "ip addr add 10.91.0.1/24 dev eth0")
        sh(ns["b"], "ip addr add 10.91.0.2/24 dev eth0", "ip link set eth0 mtu 1496")
        topo = discover(list(ns.values()))
        pred = predict(topo, Flow(ns["a"], "10.91.0.2", size=1500))
        real = any(ping(ns["a"], "10.91.0.2", size=1500 - 28) for _ in range(2))
        assert real is True
        assert pred.ok is real, _text(pred)


def test_bridge_drops_a_frame_over_its_egress_port_mtu() -> None:
    """br_dev_queue_push_xmit drops a frame longer than the egress port's MTU:
    the request never reaches b (its IcmpInEchos stays), and the model must
    fail it there, at the port, on the way out."""
    with namespaces("sw", "a", "b") as ns:
        _two_ports(ns, "10.92.0")
        sh(ns["sw"], "ip link set veth-b mtu 1400")
        assert ping(ns["a"], "10.92.0.2") or ping(ns["a"], "10.92.0.2")  # ARP settles
        before = _counters(ns["b"]).get("IcmpInEchos", 0)
        assert not ping(ns["a"], "10.92.0.2", size=1450 - 28)
        assert _counters(ns["b"]).get("IcmpInEchos", 0) == before  # lost on the way there
        pred = predict(discover(list(ns.values())), Flow(ns["a"], "10.92.0.2", size=1450))
        fail = pred.first_failure
        assert fail is not None and pred.forward_outcome == "failed", _text(pred)
        assert fail.netns == ns["sw"] and fail.interface == "veth-b", _text(pred)


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin_floods_back_out_of_the_ingress_port(hairpin: bool) -> None:
    """should_deliver lets a frame leave by the port it came in on when that
    port has hairpin on, for floods as for known unicast: two VEPA macvlans on
    one uplink reach each other only through the bridge's hairpin."""
    with namespaces("sw", "host", "c1", "c2") as ns:
        sh(ns["sw"], "ip link add br0 type bridge", "ip link set br0 up")
        veth(ns["sw"], "p", ns["host"], "uplink")
        sh(ns["sw"], "ip link set p master br0")
        sh(ns["sw"], f"bridge link set dev p hairpin {'on' if hairpin else 'off'}")
        for n, c in ((1, "c1"), (2, "c2")):
            sh(
                ns["host"],
                f"ip link add mv{n} link uplink type macvlan mode vepa",
                f"ip link set mv{n} netns {ns[c]}",
            )
            sh(ns[c], f"ip addr add 10.95.0.{n}/24 dev mv{n}", f"ip link set mv{n} up")
        assert _agree(ns, "c1", "10.95.0.2") is hairpin


def _connect_error(ns: str, dst: str, port: int) -> str:
    """What a TCP connect from ns says: the errno name, or 'connected'."""
    code = (
        "import errno, socket\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(({dst!r}, {port}))\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, 'timeout'))\n"
    )
    return subprocess.run(
        ["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True, text=True
    ).stdout.strip()


def test_a_sender_routes_again_with_its_source() -> None:
    """ip_route_connect looks the route up a second time once the source is
    chosen, so a `from` rule decides a TCP connection; ping does the same (it
    connects a UDP probe socket to learn its source, then binds to it). Here
    the rule blackholes both."""
    with namespaces("a", "b") as ns:
        veth(ns["a"], "eth0", ns["b"], "eth0")
        sh(
            ns["a"],
            "ip addr add 10.101.0.1/24 dev eth0",
            "ip rule add pref 100 from 10.101.0.1 lookup 100",
            "ip route add blackhole default table 100",
        )
        sh(ns["b"], "ip addr add 10.101.0.2/24 dev eth0")
        assert _connect_error(ns["a"], "10.101.0.2", 8080) == "EINVAL"  # the blackhole
        topo = discover(list(ns.values()))
        for flow in (Flow(ns["a"], "10.101.0.2", "tcp", 8080), Flow(ns["a"], "10.101.0.2")):
            pred = predict(topo, flow)
            fail = pred.first_failure
            assert fail is not None and fail.netns == ns["a"], _text(pred)
            assert fail.step == "route" and "blackhole" in fail.decision, _text(pred)
        assert _agree(ns, "a", "10.101.0.2") is False


@pytest.mark.parametrize(
    ("chain", "rules"),
    [
        # before conntrack (-200) nft sees no entry: ct state is invalid there
        ("type filter hook prerouting priority -300", "ct state invalid drop"),
        ("type filter hook prerouting priority -300", "ct state new accept; add rule ip t c drop"),
        # a packet to our own address leaves by lo (postrouting) and comes back (prerouting)
        ("type filter hook prerouting priority 0", "iifname lo icmp type echo-request drop"),
        ("type filter hook postrouting priority 0", "oifname lo icmp type echo-request drop"),
    ],
)
def test_hooks_a_ping_meets(chain: str, rules: str) -> None:
    with namespaces("a", "b") as ns:
        veth(ns["a"], "eth0", ns["b"], "eth0")
        sh(ns["a"], "ip addr add 10.111.0.1/24 dev eth0")
        sh(ns["b"], "ip addr add 10.111.0.2/24 dev eth0")
        table = f"add table ip t; add chain ip t c {{ {chain}; }}"
        sh(ns["b"], f"nft '{table}; add rule ip t c {rules}'")
        src = "b" if "lo" in rules else "a"
        assert _agree(ns, src, "10.111.0.2") is False


@pytest.mark.parametrize(
    ("hook", "src", "dst"),
    [
        ("prerouting", "a", "10.121.0.2"),  # NF_BR_PRE_ROUTING, before the FDB
        ("postrouting", "a", "10.121.0.2"),  # NF_BR_POST_ROUTING, per egress port
        ("input", "a", "10.121.0.254"),  # NF_BR_LOCAL_IN, up to the bridge's stack
        ("output", "sw", "10.121.0.2"),  # NF_BR_LOCAL_OUT, the bridge's own frames
    ],
)
def test_bridge_family_hooks(hook: str, src: str, dst: str) -> None:
    """A bridge-family chain drops IPv4 echo requests at each bridge hook."""
    with namespaces("sw", "a", "b") as ns:
        _two_ports(ns, "10.121.0")
        sh(ns["sw"], "ip addr add 10.121.0.254/24 dev br0")
        assert _agree(ns, src, dst) is True
        sh(
            ns["sw"],
            f"nft 'add table bridge f; add chain bridge f c {{ type filter hook {hook} "
            "priority 0; }; add rule bridge f c icmp type echo-request drop'",
        )
        assert _agree(ns, src, dst) is False
