"""Scenario files: every shipped one parses and is consistent; malformed ones are
rejected with one line naming the file and the problem (no root needed)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, as_nobody
from vethtrace.errors import UserError
from vethtrace.lab.scenario import load, load_path, scenarios, shipped_dir

SHIPPED = sorted(p.stem for p in shipped_dir().glob("*.toml"))
REQUIRED = [
    "seed",
    "seed-fixed",
    "seed-uplink",
    "bridge-two",
    "veth-peer-down",
    "mtu-mismatch",
    "bridge-down",
    "bridge-netfilter-drop",
    "missing-route",
]


def test_required_scenarios_ship() -> None:
    assert set(REQUIRED) <= set(scenarios())
    assert scenarios() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_is_valid(name: str) -> None:
    scn = load(name)
    assert scn.name == name and scn.summary and scn.description
    assert scn.expect.pings, "every scenario states at least one ping"
    ns_names = {n.name for n in scn.netns}
    for link in scn.links:
        assert link.netns in ns_names
        if link.kind == "veth":
            assert link.peer is not None and scn.link(*link.peer) is not None
    exp = scn.expect
    if exp.verdict is not None:
        assert exp.verdict in ("delivered", "diverted", "dropped", "no-reply", "unreachable")
    if scn.broken:
        assert exp.culprit is not None and exp.culprit.netns in ns_names
        assert exp.reason and "\n" not in exp.reason and len(exp.reason) < 240
        assert exp.rules, "broken scenarios name the check rules that should fire"
    else:
        assert all(p.ok for p in exp.pings) and exp.culprit is None


def test_seed_is_the_seed_story() -> None:
    scn = load("seed")
    veth0 = scn.link("host", "veth0")
    assert veth0 is not None and veth0.master == "br0"
    assert veth0.addresses == ["192.168.122.101/24"]
    br0 = scn.link("host", "br0")
    assert br0 is not None and br0.kind == "bridge" and br0.up and not br0.addresses
    veth1 = scn.link("song", "veth1")
    assert veth1 is not None and veth1.addresses == ["192.168.122.102/24"]
    assert not next(n for n in scn.netns if n.name == "song").lo
    assert [(p.source, p.to, p.ok) for p in scn.expect.pings] == [
        ("host", "192.168.122.102", False)
    ]
    assert scn.expect.verdict == "diverted" and scn.expect.culprit is not None
    assert (scn.expect.culprit.netns, scn.expect.culprit.interface) == ("host", "veth0")
    fixed = load("seed-fixed")
    fixed_br0, fixed_veth0 = fixed.link("host", "br0"), fixed.link("host", "veth0")
    assert fixed_br0 is not None and fixed_br0.addresses == ["192.168.122.101/24"]
    assert fixed_veth0 is not None and not fixed_veth0.addresses


def test_subnets_of_working_pings_match() -> None:
    """A stated ping target is assigned in the namespace it is said to be in (checked by
    the parser) and, for working scenarios, lies in a subnet of the source or behind
    one of its routes."""
    for name in SHIPPED:
        scn = load(name)
        for p in (p for p in scn.expect.pings if p.ok):
            nets = [ipaddress.ip_interface(a).network for a in scn.addresses_in(p.source)]
            routed = any(r.netns == p.source for r in scn.routes) or any(
                c.container == p.source and isinstance(pl.get("ipam"), dict)
                and pl["ipam"].get("routes")  # routes the IPAM plugin installs
                for c in scn.cni
                for pl in c.plugins
            )  # fmt: skip
            # Docker gives its containers a default route via their first network
            routed = routed or bool(scn.docker and scn.docker.container(p.source))
            assert routed or any(ipaddress.ip_address(p.to) in n for n in nets), (name, p)


BASE = """
name = "{name}"
summary = "s"
[[netns]]
name = "h"
[[netns]]
name = "p"
[[bridge]]
netns = "h"
name = "br0"
[[veth]]
a = {{ netns = "h", name = "veth0", master = "br0" }}
b = {{ netns = "p", name = "veth1", addresses = ["10.0.0.2/24"] }}
"""

BAD = {
    "vxlan-no-id": (
        '[[link]]\nnetns = "h"\nname = "vx0"\nkind = "vxlan"', "a vxlan needs id"
    ),
    "vxlan-key-on-dummy": (
        '[[link]]\nnetns = "h"\nname = "d0"\nkind = "dummy"\nid = 1', "unknown key 'id'"
    ),
    "vxlan-dev-missing": (
        '[[link]]\nnetns = "h"\nname = "vx0"\nkind = "vxlan"\nid = 1\ndev = "eth9"',
        "dev 'eth9' is not a link in the same netns",
    ),
    "fdb-not-vxlan": (
        '[[fdb]]\nnetns = "h"\ndev = "br0"\nmac = "02:00:00:00:00:01"\ndst = "10.0.0.1"',
        "is not a vxlan link",
    ),
    "fdb-bad-dst": (
        '[[link]]\nnetns = "h"\nname = "vx0"\nkind = "vxlan"\nid = 1\n'
        '[[fdb]]\nnetns = "h"\ndev = "vx0"\nmac = "02:00:00:00:00:01"\ndst = "10.0.0"',
        "not an IP address",
    ),
    "unknown-top": ("colour = 1", "unknown key 'colour'"),
    "unknown-end-key": (
        '[[veth]]\na = { netns = "h", name = "x0", adress = "1.2.3.4/24" }\n'
        'b = { netns = "p", name = "x1" }',
        "unknown key 'adress'",
    ),
    "undeclared-netns": (
        '[[veth]]\na = { netns = "h", name = "x0" }\nb = { netns = "nope", name = "x1" }',
        "netns 'nope' is not declared",
    ),
    "bad-cidr": (
        '[[veth]]\na = { netns = "h", name = "x0", addresses = ["10.0.0.300/24"] }\n'
        'b = { netns = "p", name = "x1" }',
        "not a valid address/prefix",
    ),
    "no-prefixlen": (
        '[[veth]]\na = { netns = "h", name = "x0", addresses = ["10.0.0.3"] }\n'
        'b = { netns = "p", name = "x1" }',
        "needs a prefix length",
    ),
    "master-missing": (
        '[[veth]]\na = { netns = "h", name = "x0", master = "br9" }\n'
        'b = { netns = "p", name = "x1" }',
        "master 'br9' is not a bridge or bond",
    ),
    "master-other-ns": (
        '[[veth]]\na = { netns = "h", name = "x0" }\nb = { netns = "p", name = "x1", '
        'master = "br0" }',
        "master 'br0' is not a bridge or bond in the same netns",
    ),
    "dup-iface": (
        '[[veth]]\na = { netns = "h", name = "veth0" }\nb = { netns = "p", name = "x1" }',
        "declared twice",
    ),
    "long-ifname": (
        '[[veth]]\na = { netns = "h", name = "averyveryverylongname" }\n'
        'b = { netns = "p", name = "x1" }',
        "not a usable interface name",
    ),
    "root-sysctl": (
        '[[netns]]\nname = "q"\nsysctl = { "kernel.panic" = 1 }',
        "not a per-namespace net.* setting",
    ),
    "unquoted-sysctl": (
        '[[netns]]\nname = "q"\nsysctl.net.ipv4.ip_forward = 1',
        "quote dotted names",
    ),
    "bad-lo": ('[[netns]]\nname = "q"\nlo = "off"', 'lo must be "up" or "down"'),
    "dup-netns": ('[[netns]]\nname = "h"', "netns 'h' is declared twice"),
    "bad-route": (
        '[[route]]\nnetns = "p"\ndst = "10.1.0.0/33"\nvia = "10.0.0.1"',
        'is not "default" or a network CIDR',
    ),
    "route-nowhere": ('[[route]]\nnetns = "p"\ndst = "default"', "needs via, dev or both"),
    "route-dev": (
        '[[route]]\nnetns = "p"\ndst = "default"\ndev = "eth7"',
        "dev 'eth7' is not a link",
    ),
    "bad-kind": ('[[link]]\nnetns = "h"\nname = "t0"\nkind = "tun"', "kind 'tun' is not one"),
    "macvlan-no-lower": ('[[link]]\nnetns = "h"\nname = "m0"\nkind = "macvlan"', "needs lower ="),
    "bad-mode": (
        '[[link]]\nnetns = "h"\nname = "m0"\nkind = "macvlan"\nlower = "veth0"\nmode = "l3"',
        "mode 'l3' not allowed",
    ),
    "port-no-bridge": (
        '[[veth]]\na = { netns = "h", name = "x0", port = { hairpin = true } }\n'
        'b = { netns = "p", name = "x1" }',
        "port options need master = a bridge",
    ),
    "port-blocking": (
        '[[veth]]\na = { netns = "h", name = "x0", master = "br0", port = { state = '
        '"blocking" } }\nb = { netns = "p", name = "x1" }',
        "cannot be forced without STP",
    ),
    "bad-mtu": (
        '[[veth]]\na = { netns = "h", name = "x0", mtu = 20 }\nb = { netns = "p", name = "x1" }',
        "mtu 20 out of range",
    ),
    "bad-mac": (
        '[[veth]]\na = { netns = "h", name = "x0", mac = "zz" }\nb = { netns = "p", name = "x1" }',
        "is not like 02:00",
    ),
    "bad-verdict": ('[expect]\nverdict = "lost"', "verdict 'lost' is not one of"),
    "broken-no-reason": (
        '[expect]\nverdict = "dropped"\nculprit = { netns = "h" }',
        "needs culprit and reason",
    ),
    "culprit-iface": (
        '[expect]\nculprit = { netns = "h", interface = "eth9" }',
        "interface 'eth9' is not a link",
    ),
    "ping-not-owned": (
        '[[expect.ping]]\nfrom = "h"\nnetns = "p"\nto = "10.0.0.9"\nok = true',
        "10.0.0.9 is not an address of netns 'p'",
    ),
    "ping-bad-ip": (
        '[[expect.ping]]\nfrom = "h"\nnetns = "p"\nto = "host"\nok = true',
        "is not an IP address",
    ),
    "ping-missing-ok": (
        '[[expect.ping]]\nfrom = "h"\nnetns = "p"\nto = "10.0.0.2"',
        "missing key 'ok'",
    ),
    "rule-case": ('[expect]\nrules = ["NoRoute"]', "must be kebab-case"),
    "not-toml": ("[[veth]\nx = ", "not valid TOML"),
    "wrong-type": (
        '[[veth]]\na = { netns = "h", name = "x0", up = "yes" }\nb = { netns = "p", name = "x1" }',
        "up must be true or false",
    ),
}


def _write(tmp_path: Path, name: str, extra: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name) + extra + "\n")
    return path


def test_base_is_valid(tmp_path: Path) -> None:
    scn = load_path(_write(tmp_path, "ok", ""))
    assert [lk.name for lk in scn.links] == ["br0", "veth0", "veth1"]
    assert not scn.broken


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_is_one_clear_line(tmp_path: Path, case: str) -> None:
    extra, message = BAD[case]
    path = _write(tmp_path, case, extra)
    with pytest.raises(UserError) as err:
        load_path(path)
    text = str(err.value)
    assert message in text
    assert text.startswith(str(path) + ":"), "the message names the file"
    assert "\n" not in text


def test_name_must_match_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text(BASE.format(name="ok"))
    with pytest.raises(UserError, match="must match the file name 'other'"):
        load_path(path)


def test_unknown_scenario_lists_known() -> None:
    with pytest.raises(UserError, match=r"unknown lab scenario 'nope' \(known: .*seed"):
        load("nope")


def test_cli_list_and_show(cli) -> None:
    res = cli("lab", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "SUMMARY"]
    names = [ln.split()[0] for ln in lines[1:] if ln[:1].strip()]
    assert names == SHIPPED
    state_col = lines[0].index("STATE")
    for ln in lines[1:]:
        if ln[:1].strip():
            assert ln[state_col:].split()[0] in ("broken", "working", "invalid")
    seed_line = next(ln for ln in lines if ln.startswith("seed "))
    assert "broken" in seed_line
    assert "working" in next(ln for ln in lines if ln.startswith("bridge-two "))

    res = cli("lab", "show", "seed", env={**os.environ, "VETHTRACE_LAB_PREFIX": "vtq-"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for piece in (
        "vtq-host",
        "vtq-song",
        "br0",
        "veth0",
        "192.168.122.101/24",
        "lo down",
        "should fail",
        "diverted",
        "address-on-bridge-port",
    ):
        assert piece in out, piece
    assert "should work" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (("lab", "show", "nope"), "unknown lab scenario 'nope'"),
        (("lab", "up", "nope"), "unknown lab scenario 'nope'"),
    ],
)
def test_cli_bad_input(cli, args, message) -> None:
    res = cli(*args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_not_root() -> None:
    """Without root, up and down refuse in one line (run as nobody when we are root)."""
    cmd_prefix = as_nobody()
    for action in (["up", "seed"], ["down"]):
        exe = str(VENV_BIN / "vethtrace")
        res = subprocess.run(
            [*cmd_prefix, exe, "lab", *action], capture_output=True, text=True, check=False
        )
        assert res.returncode == 2, res
        assert res.stderr.count("\n") == 1 and "needs root" in res.stderr
