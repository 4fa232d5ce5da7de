"""Labs built by the real CNI plugins: `down` runs DEL for every attachment (the
plugins' iptables rules, veths and IPAM reservations go before the namespaces
do), stops the lab's listeners, removes the per-lab IPAM directory, and all of
it also after an `up` that was killed half-way. The root namespace is never
touched: no cni0 there, no /var/lib/cni reservations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.labs import built_lab, check_pings, check_tcp
from vethtrace.lab import cni, namespaces, state
from vethtrace.netns import exists

pytestmark = pytest.mark.privileged


def run_in(ns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=True
    ).stdout


def cni_rules(ns: str) -> list[str]:
    """iptables rules the CNI plugins made in `ns` for the lab's containers: they name
    the container ID in a comment or a pod address. (portmap keeps its shared,
    empty top-level chains after the last DEL, as it does on a real host.)"""
    rules = run_in(ns, "iptables-nft-save")
    return [line for line in rules.splitlines()
            if line.startswith("-A") and ("vethtrace-" in line or "10.22.0." in line)]  # fmt: skip


def veths(ns: str) -> list[str]:
    out = json.loads(run_in(ns, "ip", "-j", "link", "show", "type", "veth") or "[]")
    return sorted(lk["ifname"] for lk in out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_down_runs_cni_del_then_removes_everything(prefix: str, monkeypatch) -> None:
    root_links = set(os.listdir("/sys/class/net"))
    seen: dict[str, object] = {}
    with built_lab("cni-portmap", prefix) as lab:
        node = lab.ns("node")
        st = state.find("cni-portmap", prefix)
        assert st is not None and st.complete and len(st.cni) == 2
        data_dir = cni.ipam_dir(st)
        # what the plugins made, where they made it
        assert (data_dir / "podnet" / "10.22.0.2").is_file()
        assert (data_dir / "podnet" / "10.22.0.3").is_file()
        assert not Path("/var/lib/cni/networks/podnet").exists()
        rules = cni_rules(node)
        assert any("MASQUERADE" in r for r in rules), rules  # bridge ipMasq
        assert any("DNAT" in r and "10.22.0.3:80" in r for r in rules), rules  # portmap
        assert len(veths(node)) == 3  # up0 and the two host-side veths of the pods
        assert "cni0" in run_in(node, "ip", "-br", "link")
        (listener,) = st.listeners
        assert alive(listener["pid"])
        assert all(ok == t.ok for t, ok in check_tcp(lab))
        assert all(ok == p.ok for p, ok in check_pings(lab))

        # Just before down removes the first namespace: look at what DEL left.
        real_remove, real_rmtree = namespaces.remove, cni.shutil.rmtree

        def remove(name: str) -> bool:
            if "rules" not in seen:
                seen["rules"] = cni_rules(node)
                seen["veths"] = veths(node)
                seen["listener"] = alive(listener["pid"])
                seen["dir"] = data_dir.exists()
            return real_remove(name)

        def rmtree(path, *a, **kw):  # the reservations DEL left behind, then the directory
            seen["ipam"] = sorted(p.name for p in Path(path).rglob("*") if p.is_file())
            return real_rmtree(path, *a, **kw)

        monkeypatch.setattr(namespaces, "remove", remove)
        monkeypatch.setattr(cni.shutil, "rmtree", rmtree)
        lab.down()
        assert st.path.exists() is False
    assert seen["rules"] == [], "DEL removed the ipMasq and hostPort rules"
    assert seen["veths"] == ["up0"], "DEL removed the pods' veths"
    assert seen["listener"] is False, "the listener was stopped before the namespaces went"
    assert seen["dir"] is False
    assert "10.22.0.2" not in seen["ipam"] and "10.22.0.3" not in seen["ipam"], seen["ipam"]
    assert not data_dir.exists()
    assert not any(exists(lab.ns(n.name)) for n in lab.scenario.netns)
    assert set(os.listdir("/sys/class/net")) == root_links, "root namespace untouched"


CRASH = textwrap.dedent("""
    import os, sys
    from vethtrace.lab import cni, up
    real = cni._call
    def crash(command, rec, conf, prev):
        if command == "ADD" and rec["container"].endswith("pod-b"):
            os._exit(9)      # like SIGKILL in the middle of the second attachment
        return real(command, rec, conf, prev)
    cni._call = crash
    up(sys.argv[1], sys.argv[2])
""")


def test_crashed_cni_up_is_recovered(cli, prefix: str) -> None:
    name = "cni-bridge-masq"
    env = {**os.environ, "VETHTRACE_LAB_PREFIX": prefix}
    res = subprocess.run([sys.executable, "-c", CRASH, name, prefix], cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 9, res.stderr
    st = state.find(name, prefix)
    assert st is not None and not st.complete
    # both attachments were recorded before their ADD; only the first has a result
    assert [r["container"] for r in st.cni] == [f"{prefix}pod-a", f"{prefix}pod-b"]
    assert st.cni[0]["result"] and st.cni[1]["result"] is None
    data_dir = cni.ipam_dir(st)
    assert (data_dir / "podnet" / "10.22.0.2").is_file()
    assert cni_rules(f"{prefix}node"), "pod-a's ipMasq rule was made"

    # `up` again removes the half-built lab (DEL, IPAM directory) and rebuilds it:
    # host-local hands out the same addresses again (the build checks them)
    again = cli("lab", "up", name, env=env)
    assert again.returncode == 0, again.stderr
    st = state.find(name, prefix)
    assert st is not None and st.complete
    assert sorted(p.name for p in (data_dir / "podnet").glob("10.*")) == ["10.22.0.2", "10.22.0.3"]

    # crash again, then `lab down` alone cleans up
    cli("lab", "down", name, env=env)
    res = subprocess.run([sys.executable, "-c", CRASH, name, prefix], cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 9, res.stderr
    down = cli("lab", "down", name, env=env)
    assert down.returncode == 0, down.stderr
    assert "note:" not in down.stdout, down.stdout  # every DEL succeeded
    assert not data_dir.exists() and state.find(name, prefix) is None
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


def test_failing_plugin_rolls_back(cli, prefix: str, tmp_path: Path) -> None:
    """A plugin that refuses (here: a macvlan master that does not exist) rolls the
    whole lab back with one line naming the plugin and the plugin's own message."""
    path = tmp_path / "cni-bad.toml"
    path.write_text(textwrap.dedent('''
        name = "cni-bad"
        summary = "s"
        [[netns]]
        name = "node"
        [[netns]]
        name = "pod"
        [[cni]]
        netns = "node"
        container = "pod"
        ifname = "eth0"
        config = """{"cniVersion": "1.0.0", "name": "lan", "type": "macvlan",
          "master": "nosuch0", "ipam": {"type": "host-local", "subnet": "10.5.0.0/24"}}"""
    '''))
    env = {**os.environ, "VETHTRACE_LAB_PREFIX": prefix}
    res = cli("lab", "up", str(path), env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "CNI macvlan ADD" in res.stderr and "Link not found" in res.stderr, res.stderr
    assert "rolled back" in res.stderr and "Traceback" not in res.stderr
    assert state.find("cni-bad", prefix) is None
    assert not (state.STATE_DIR / f"{prefix}cni-bad.cni").exists()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
