"""[[cni]] steps and the other container-network scenario keys, parsed without root:
the configs a plugin gets on stdin are built the way libcni builds them, and
malformed steps are one line naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vethtrace.errors import UserError
from vethtrace.lab import cni, state
from vethtrace.lab.scenario import load, load_path

BASE = """
name = "{name}"
summary = "s"
[[netns]]
name = "node"
[[netns]]
name = "pod"
"""

BRIDGE = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "bridge", "bridge": "br9", "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "tuning", "mtu": 1400},
    ],
}  # fmt: skip


def step(config: object, **extra: object) -> str:
    text = json.dumps(config) if not isinstance(config, str) else config
    lines = ['[[cni]]', 'netns = "node"', 'container = "pod"', 'ifname = "eth0"',
             f"config = '''{text}'''"]  # fmt: skip
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines)


def write(tmp_path: Path, name: str, extra: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name) + extra + "\n")
    return path


def test_conflist_parsed_and_netconfs_like_libcni(tmp_path: Path) -> None:
    runtime = '{ portMappings = [{ hostPort = 8080, containerPort = 80, protocol = "tcp" }] }'
    extra = step(BRIDGE, addresses='["10.9.0.2/24"]', runtime=runtime)
    extra += '\n[[expect.ping]]\nfrom = "node"\nnetns = "pod"\nto = "10.9.0.2"\nok = true'
    scn = load_path(write(tmp_path, "ok", extra))
    (c,) = scn.cni
    assert (c.netns, c.container, c.ifname, c.name, c.version) == (
        "node", "pod", "eth0", "podnet", "1.0.0")  # fmt: skip
    assert c.types == ["bridge", "portmap", "tuning"]
    assert scn.addresses_in("pod") == ["10.9.0.2/24"]
    assert ("node", "br9") in c.interfaces() and ("pod", "eth0") in c.interfaces()
    confs = cni.netconfs(c, Path("/run/x.cni"))
    # every plugin gets the network's name and version
    assert all(p["name"] == "podnet" and p["cniVersion"] == "1.0.0" for p in confs)
    # host-local is pointed at the lab's own directory, never /var/lib/cni
    assert confs[0]["ipam"]["dataDir"] == "/run/x.cni"
    # runtimeConfig only for the plugin that declares the capability
    assert confs[1]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert "runtimeConfig" not in confs[0] and "runtimeConfig" not in confs[2]
    # the step's own configs are not changed by building the stdin ones
    assert "dataDir" not in c.plugins[0]["ipam"]


def test_single_plugin_config_is_a_list_of_one(tmp_path: Path) -> None:
    conf = {"cniVersion": "0.4.0", "name": "n", "type": "ptp", "ipMasq": True}
    (c,) = load_path(write(tmp_path, "one", step(conf))).cni
    assert c.plugins == [{"type": "ptp", "ipMasq": True}] and c.version == "0.4.0"
    assert cni.netconfs(c, Path("/d")) == [conf]


def test_ipam_dir_is_per_lab() -> None:
    a = cni.ipam_dir(state.LabState(name="lab", prefix="vt-"))
    b = cni.ipam_dir(state.LabState(name="lab", prefix="vtx-"))
    assert a != b and a.parent == state.STATE_DIR and not a.name.endswith(".json")


BAD = {
    "not-json": (step("{nope"), "config is not valid JSON"),
    "no-name": (step({"cniVersion": "1.0.0", "type": "bridge"}), 'config needs "name"'),
    "no-version": (step({"name": "n", "type": "bridge"}), 'config needs "cniVersion"'),
    "no-type": (step({"name": "n", "cniVersion": "1.0.0"}), 'needs "type" or a "plugins"'),
    "empty-list": (step({"name": "n", "cniVersion": "1.0.0", "plugins": []}), "non-empty list"),
    "plugin-no-type": (
        step({"name": "n", "cniVersion": "1.0.0", "plugins": [{"mtu": 1}]}),
        'plugin #1 needs a "type"',
    ),
    "type-path": (
        step({"name": "n", "cniVersion": "1.0.0", "type": "../../bin/sh"}),
        "is not a plugin name",
    ),
    "datadir": (
        step(
            {
                "name": "n",
                "cniVersion": "1.0.0",
                "type": "bridge",
                "ipam": {"type": "host-local", "dataDir": "/var/lib/cni"},
            }
        ),
        "ipam dataDir is set by the lab",
    ),
    "unknown-key": (step({"name": "n", "cniVersion": "1", "type": "x"}, colour=1), "unknown key"),
    "undeclared": (
        step({"name": "n", "cniVersion": "1", "type": "x"}).replace('"pod"', '"nope"'),
        "[[cni]] #1 container: netns 'nope' is not declared",
    ),
    "same-ns": (
        step({"name": "n", "cniVersion": "1", "type": "x"}).replace('"pod"', '"node"'),
        "container must be another namespace",
    ),
    "bad-ifname": (
        step({"name": "n", "cniVersion": "1", "type": "x"}).replace('"eth0"', '"lo"'),
        "is not a usable interface name",
    ),
    "bad-address": (
        step({"name": "n", "cniVersion": "1", "type": "x"}, addresses='["10.0.0.1"]'),
        "needs a prefix length",
    ),
    "bad-up": (step({"name": "n", "cniVersion": "1", "type": "x"}, up='"no"'), "up must be"),
    "ping-unowned": (
        step({"name": "n", "cniVersion": "1", "type": "x"}, addresses='["10.0.0.2/24"]')
        + '\n[[expect.ping]]\nfrom = "node"\nnetns = "pod"\nto = "10.0.0.3"\nok = true',
        "10.0.0.3 is not an address of netns 'pod' (it has: 10.0.0.2)",
    ),
    "tcp-port": (
        '[[expect.tcp]]\nfrom = "node"\nnetns = "pod"\nto = "10.0.0.3"\nport = 0\nok = true',
        "port 0 out of range",
    ),
    "listen-port": ('[[listen]]\nnetns = "pod"\nport = 70000', "port 70000 out of range"),
    "iptables-text": ('[[netns]]\nname = "fw"\niptables = "-P FORWARD DROP"', "iptables-save"),
    "onlink-no-dev": (
        '[[route]]\nnetns = "pod"\ndst = "default"\nvia = "169.254.1.1"\nonlink = true',
        "onlink needs both via and dev",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_is_one_clear_line(tmp_path: Path, case: str) -> None:
    extra, message = BAD[case]
    path = write(tmp_path, case, extra)
    with pytest.raises(UserError) as err:
        load_path(path)
    text = str(err.value)
    assert message in text and text.startswith(f"{path}:") and "\n" not in text


def test_shipped_cni_labs_pin_their_addresses() -> None:
    """Every shipped [[cni]] step states the addresses IPAM must hand out (the build
    checks them), so pings can name them."""
    from vethtrace.lab import scenarios

    steps = [c for n in scenarios() for c in load(n).cni]
    assert len(steps) >= 20
    assert all(c.addresses for c in steps)
    kinds = {t for c in steps for t in c.types}
    assert {"bridge", "ptp", "macvlan", "portmap", "tuning", "firewall"} <= kinds
