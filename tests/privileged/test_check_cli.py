"""`vethtrace check` as a user runs it: the seed's three stages read like an
expert's answer, --json has the fields README's check section lists, exit codes mean what the
CLI contract says, and this machine's own root namespace is clean."""

from __future__ import annotations

import json

import pytest

from tests.labs import lab_fixture

pytestmark = pytest.mark.privileged

seed = lab_fixture("seed")
stage2 = lab_fixture("check-same-subnet")
uplink = lab_fixture("seed-uplink")

FIELDS = {"rule", "severity", "netns", "interface", "summary", "explanation", "fix"}


def test_stage1_seed_names_the_bridge_port(cli, seed) -> None:
    host, song = seed.ns("host"), seed.ns("song")
    r = cli("check", "-n", host, "-n", song)
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert f"{host}/veth0" in out and "address-on-bridge-port" in out
    assert "rx_handler" in out and "INCOMPLETE" in out
    assert f"ip -n {host} addr del 192.168.122.101/24 dev veth0" in out
    assert f"ip -n {host} addr add 192.168.122.101/24 dev br0" in out
    assert out.index("Errors") < out.index("Notes")  # grouped, worst first
    assert max(len(line) for line in out.splitlines() if not line.startswith("    ip")) <= 100


def test_stage1_json_schema(cli, seed) -> None:
    host = seed.ns("host")
    r = cli("check", "--json", "-n", host, "-n", seed.ns("song"))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert set(doc) == {"findings"}
    first = doc["findings"][0]
    assert set(first) == FIELDS
    assert (first["rule"], first["severity"], first["netns"], first["interface"]) == (
        "address-on-bridge-port", "error", host, "veth0")
    assert all(isinstance(c, str) for c in first["fix"])


def test_stage2_same_subnet_enslaves_the_uplink(cli, stage2) -> None:
    host = stage2.ns("host")
    doc = json.loads(cli("check", "--json", "-n", host).stdout)
    (f,) = [f for f in doc["findings"] if f["severity"] != "info"]
    assert (f["rule"], f["interface"]) == ("same-subnet", "eth0")
    assert "192.168.122.1 (the default gateway)" in f["explanation"]
    assert f["fix"][0] == f"ip -n {host} link set eth0 master br0"
    assert f"ip -n {host} route replace default via 192.168.122.1 dev br0" in f["fix"]


def test_stage3_uplink_is_clean(cli, uplink) -> None:
    names = [uplink.ns(n) for n in ("host", "song", "gw")]
    r = cli("check", *[a for n in names for a in ("-n", n)])
    assert r.returncode == 0, r.stdout
    assert "No problems found" in r.stdout


def test_root_namespace_of_this_machine_is_clean(cli) -> None:
    r = cli("check", "--json", "-n", "root")
    loud = [f for f in json.loads(r.stdout)["findings"] if f["severity"] != "info"]
    assert r.returncode == 0 and not loud, loud


def test_unknown_namespace_is_one_line_and_exit_2(cli) -> None:
    r = cli("check", "-n", "no-such-namespace-vtx")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no-such-namespace-vtx" in r.stderr
    assert "Traceback" not in r.stderr
