"""Labs on real namespaces: every scenario is built, its stated pings are checked with
the system's ping (`ip netns exec NS ping -c1 -W1`, independent of our code), and
`down` leaves nothing behind. Plus the bad-input paths of `vethtrace lab`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, new_prefix
from tests.labs import built_lab, check_pings, check_tcp, lab_fixture, ping
from vethtrace.lab import state
from vethtrace.lab.scenario import load, shipped_dir

pytestmark = pytest.mark.privileged

# check-* scenarios belong to the CHECK engineer's tests; the unit test validates them.
SCENARIOS = sorted(
    p.stem for p in shipped_dir().glob("*.toml") if not p.stem.startswith("check-")
)


def ours(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


def ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def root_links() -> set[str]:
    return {lk["ifname"] for lk in ip_json("link", "show")}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_up_pings_down(name: str, prefix: str) -> None:
    scn = load(name)
    before_root = root_links()
    with built_lab(name, prefix) as lab:
        assert sorted(ours(prefix)) == sorted(prefix + n.name for n in scn.netns)
        # every declared interface exists where the scenario says, with its addresses
        for ns in scn.netns:
            links = {lk["ifname"]: lk for lk in ip_json("-n", lab.ns(ns.name), "addr", "show")}
            assert ("UP" in links["lo"]["flags"]) == ns.lo, (ns.name, "lo")
            for want in scn.links_in(ns.name):
                got = links[want.name]
                addrs = {f"{a['local']}/{a['prefixlen']}" for a in got.get("addr_info", [])}
                assert set(want.addresses) <= addrs, (ns.name, want.name)
                assert ("UP" in got["flags"]) == want.up, (ns.name, want.name, got["flags"])
                if want.master:
                    assert got.get("master") == want.master
                if want.mtu:
                    assert got["mtu"] == want.mtu
        # nothing of the lab leaked into the root namespace
        new_in_root = root_links() - before_root
        assert not new_in_root & {lk.name for lk in scn.links}
        results = check_pings(lab)
        wrong = [(p.source, p.to, p.size, p.ok) for p, reached in results if reached != p.ok]
        assert not wrong, f"pings that did not behave as stated (from, to, size, expected): {wrong}"
        wrong_tcp = [(t.source, t.to, t.port, t.ok) for t, ok in check_tcp(lab) if ok != t.ok]
        assert not wrong_tcp, f"tcp not as stated (from, to, port, expected): {wrong_tcp}"
    assert ours(prefix) == []
    assert state.find(name, prefix) is None


def test_netfilter_drop_is_the_rule(prefix: str) -> None:
    """The failing pings of bridge-netfilter-drop are dropped by its nft rule (counter),
    and the sysctl was written in the lab namespace, not in the root one."""
    root_value = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text()
    with built_lab("bridge-netfilter-drop", prefix) as lab:
        check_pings(lab)
        sw = lab.ns("sw")
        out = subprocess.run(
            ["ip", "netns", "exec", sw, "nft", "-j", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counters = [
            r["counter"]["packets"]
            for item in json.loads(out)["nftables"]
            if "rule" in item
            for r in item["rule"]["expr"]
            if "counter" in r
        ]
        assert counters and counters[0] >= 2
    assert Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text() == root_value


def test_mtu_drop_is_counted_on_the_small_end(prefix: str) -> None:
    with built_lab("mtu-mismatch", prefix) as lab:
        check_pings(lab)
        eth0 = ip_json("-s", "-n", lab.ns("b"), "link", "show", "eth0")[0]
        assert eth0["mtu"] == 1000
        assert eth0["stats64"]["rx"]["dropped"] >= 1


FEATURES = """
name = "features"
summary = "builder features the check scenarios use"

[[netns]]
name = "h"
lo = "down"
nft = '''
table ip vt_t {
    chain input { type filter hook input priority 0; policy accept; }
}
'''
[netns.sysctl]
"net.ipv4.ip_forward" = 1
"net.ipv4.conf.all.rp_filter" = 1
"net.ipv4.conf.mv0.arp_ignore" = 2
"net.bridge.bridge-nf-call-iptables" = 0

[[netns]]
name = "p"

[[bridge]]
netns = "h"
name = "br0"
addresses = ["10.9.0.1/24"]
mtu = 1400

[[bridge]]
netns = "h"
name = "br1"
stp = true

[[veth]]
b = { netns = "p", name = "veth1", addresses = ["10.9.0.2/24"], mtu = 1400 }
[veth.a]
netns = "h"
name = "veth0"
master = "br0"
mac = "02:00:00:00:00:01"
port = { state = "learning", isolated = true, hairpin = true, learning = false }

[[veth]]
a = { netns = "h", name = "vx", master = "br1" }
b = { netns = "h", name = "vy", up = false }

[[link]]
netns = "h"
name = "mv0"
kind = "macvlan"
lower = "vy"
mode = "private"
addresses = ["10.8.0.1/24"]

[[route]]
netns = "p"
dst = "10.8.0.0/24"
via = "10.9.0.1"
dev = "veth1"

[[route]]
netns = "p"
dst = "default"
dev = "veth1"
metric = 100

[[neigh]]
netns = "p"
dev = "veth1"
ip = "10.9.0.77"
mac = "02:00:00:00:00:77"

[[expect.ping]]
from = "p"
netns = "h"
to = "10.9.0.1"
ok = false
"""


def sysctl(ns: str | None, key: str) -> str:
    cmd = ["sysctl", "-n", key] if ns is None else ["ip", "netns", "exec", ns, "sysctl", "-n", key]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def test_builder_features(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "features.toml"
    path.write_text(FEATURES)
    keys = [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.bridge.bridge-nf-call-iptables",
    ]
    root_before = [sysctl(None, k) for k in keys]
    with built_lab(str(path), prefix) as lab:
        h, p = lab.ns("h"), lab.ns("p")
        assert [sysctl(h, k) for k in keys] == ["1", "1", "0"]
        assert sysctl(h, "net.ipv4.conf.mv0.arp_ignore") == "2"
        assert [sysctl(None, k) for k in keys] == root_before, "root sysctls untouched"
        links = {lk["ifname"]: lk for lk in ip_json("-d", "-n", h, "link", "show")}
        assert "UP" not in links["lo"]["flags"]
        assert links["br0"]["mtu"] == 1400 and links["veth0"]["address"] == "02:00:00:00:00:01"
        assert links["br1"]["linkinfo"]["info_data"]["stp_state"] == 1
        assert links["br0"]["linkinfo"]["info_data"]["stp_state"] == 0
        assert links["mv0"]["linkinfo"]["info_kind"] == "macvlan"
        assert links["mv0"]["linkinfo"]["info_data"]["mode"] == "private"
        assert links["mv0"]["link"] == "vy" and "UP" not in links["vy"]["flags"]
        port = json.loads(
            subprocess.run(
                ["ip", "netns", "exec", h, "bridge", "-d", "-j", "link", "show", "dev", "veth0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )[0]
        assert port["state"] == "learning"
        assert port["isolated"] is True and port["hairpin"] is True and port["learning"] is False
        routes = {(r["dst"], r.get("gateway"), r.get("metric")) for r in ip_json("-n", p, "route")}
        assert ("10.8.0.0/24", "10.9.0.1", None) in routes and ("default", None, 100) in routes
        neigh = ip_json("-n", p, "neigh", "show", "10.9.0.77")[0]
        assert neigh["lladdr"] == "02:00:00:00:00:77" and "PERMANENT" in neigh["state"]
        nft = subprocess.run(
            ["ip", "netns", "exec", h, "nft", "list", "tables"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "vt_t" in nft
        # learning state: the port forwards nothing, so p cannot reach br0's address
        assert [reached for _, reached in check_pings(lab)] == [False]
    assert ours(prefix) == []


# ---------------------------------------------------------------- the CLI


def lab_cli(cli, prefix: str, *args: str):
    return cli("lab", *args, env={**os.environ, "VETHTRACE_LAB_PREFIX": prefix})


def one_line_error(res, fragment: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_cli_up_twice_down_twice(cli, prefix: str) -> None:
    res = lab_cli(cli, prefix, "up", "seed")
    try:
        assert res.returncode == 0, res.stderr
        assert f"{prefix}host" in res.stdout and f"{prefix}song" in res.stdout
        assert sorted(ours(prefix)) == [f"{prefix}host", f"{prefix}song"]
        inode = os.stat(f"/run/netns/{prefix}host").st_ino
        again = lab_cli(cli, prefix, "up", "seed")
        assert again.returncode == 0 and again.stdout.count("\n") == 1
        assert "already up" in again.stdout
        assert os.stat(f"/run/netns/{prefix}host").st_ino == inode, "nothing rebuilt"
        # a second lab over the same namespace names is refused, nothing of it built
        clash = lab_cli(cli, prefix, "up", "seed-fixed")
        one_line_error(clash, "belongs to lab seed")
    finally:
        down = lab_cli(cli, prefix, "down", "seed")
    assert down.returncode == 0 and "removed lab seed" in down.stdout
    assert ours(prefix) == []
    one_line_error(lab_cli(cli, prefix, "down", "seed"), "lab seed is not up")
    one_line_error(lab_cli(cli, prefix, "down"), "no labs are up")


def test_cli_down_all_with_prefix(cli, prefix: str) -> None:
    other = new_prefix()
    with built_lab("bridge-two", other):
        for name in ("seed", "bridge-two"):
            assert lab_cli(cli, prefix, "up", name).returncode == 0
        assert len(ours(prefix)) == 5
        res = lab_cli(cli, prefix, "down")
        assert res.returncode == 0 and res.stdout.count("removed lab") == 2
        assert ours(prefix) == []
        assert len(ours(other)) == 3, "another prefix's lab is left alone"


def test_cli_clash_with_foreign_namespace(cli, prefix: str) -> None:
    subprocess.run(["ip", "netns", "add", f"{prefix}song"], check=True)
    try:
        one_line_error(lab_cli(cli, prefix, "up", "seed"), "was not built by vethtrace lab")
        assert ours(prefix) == [f"{prefix}song"], "nothing half-built, the foreign one kept"
        one_line_error(lab_cli(cli, prefix, "down"), "no labs are up")
        assert ours(prefix) == [f"{prefix}song"]
    finally:
        subprocess.run(["ip", "netns", "del", f"{prefix}song"], check=True)


def test_cli_malformed_and_failing_scenarios(cli, prefix, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\nsummary = "x"\n[[netns]]\nname = "a"\n[[veth]]\n'
        'a = { netns = "a", name = "e0", addresses = ["10.0.0.1"] }\n'
        'b = { netns = "a", name = "e1" }\n'
    )
    one_line_error(lab_cli(cli, prefix, "up", str(bad)), f"{bad}: [[veth]] #1 a 'e0'")
    # valid, but the kernel refuses the route (gateway not on any subnet): rolled back
    fails = tmp_path / "fails.toml"
    fails.write_text(
        'name = "fails"\nsummary = "x"\n[[netns]]\nname = "a"\n[[netns]]\n'
        'name = "b"\n[[veth]]\na = { netns = "a", name = "e0", addresses = '
        '["10.0.0.1/24"] }\nb = { netns = "b", name = "e1" }\n[[route]]\n'
        'netns = "b"\ndst = "default"\nvia = "10.5.0.1"\n'
        '[[expect.ping]]\nfrom = "b"\nnetns = "a"\nto = "10.0.0.1"\nok = false\n'
    )
    res = lab_cli(cli, prefix, "up", str(fails))
    one_line_error(res, "adding route default via 10.5.0.1")
    assert "rolled back" in res.stderr
    assert ours(prefix) == [] and state.find("fails", prefix) is None


CRASH = textwrap.dedent("""
    import os, sys
    from vethtrace.lab import builder, up
    def crash(*a, **k):
        os._exit(9)          # like SIGKILL half-way: no rollback runs
    builder._sysctls = crash  # called once links exist in the first namespace
    up(sys.argv[1], sys.argv[2])
""")


def test_down_after_crashed_up(cli, prefix: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", CRASH, "seed-uplink", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 9, res.stderr
    left = ours(prefix)
    assert sorted(left) == sorted(f"{prefix}{n}" for n in ("host", "song", "gw"))
    st = state.find("seed-uplink", prefix)
    assert st is not None and not st.complete
    # `up` again notices the half-built lab and rebuilds it; `down` then removes all
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vethtrace.lab import up; up(*sys.argv[1:])",
            "seed-uplink",
            prefix,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    rebuilt = state.find("seed-uplink", prefix)
    assert rebuilt is not None and rebuilt.complete
    assert any(ping(f"{prefix}host", "192.168.122.102") for _ in range(3)), "rebuilt lab works"
    # then `lab down`, removes exactly what was recorded
    subprocess.run(["ip", "netns", "del", f"{prefix}gw"], check=True)  # partly torn down
    res = lab_cli(cli, prefix, "down", "seed-uplink")
    assert res.returncode == 0, res.stderr
    assert ours(prefix) == [] and state.find("seed-uplink", prefix) is None


seed_lab = lab_fixture("seed")


def test_module_fixture_gives_a_built_lab(seed_lab) -> None:
    assert seed_lab.ns("song").endswith("-song") and os.path.exists(
        f"/run/netns/{seed_lab.ns('song')}"
    )
    with pytest.raises(KeyError):
        seed_lab.ns("nope")
