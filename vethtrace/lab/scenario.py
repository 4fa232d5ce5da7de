"""Lab scenarios: TOML data files (vethtrace/lab/scenarios/*.toml) as dataclasses.

Scenarios are data, not code, so users can read and write them without Python,
and tests can use their stated expectations. This module holds what a scenario
is (the dataclasses and the kinds and modes it may name) and where scenarios
are found; parse.py checks a file's tables into these dataclasses, rejecting
anything a builder could trip over before anything is created.
Format reference: vethtrace/lab/scenarios/README.md.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vethtrace.errors import UserError
from vethtrace.packaged import packaged

VERDICTS = ("delivered", "diverted", "dropped", "no-reply", "unreachable")
LINK_KINDS = ("dummy", "macvlan", "ipvlan", "bond", "vxlan")
PORT_STATES = {"disabled": 0, "listening": 1, "learning": 2, "forwarding": 3, "blocking": 4}
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
BOND_MODES = {
    "balance-rr": 0,
    "active-backup": 1,
    "balance-xor": 2,
    "broadcast": 3,
    "802.3ad": 4,
    "balance-tlb": 5,
    "balance-alb": 6,
}
# Only sysctls that live in each namespace's own /proc/sys/net view; anything
# else would change the whole machine.
SYSCTL_PREFIXES = ("net.ipv4.", "net.ipv6.", "net.bridge.", "net.netfilter.", "net.core.")


@dataclass
class PortOptions:
    """Bridge-port settings; `state` can only be forced while the bridge runs no STP."""

    state: str | None = None
    isolated: bool | None = None
    hairpin: bool | None = None
    learning: bool | None = None
    flood: bool | None = None  # unknown-unicast flooding to this port


@dataclass
class VxlanSpec:
    """A `[[link]]` of kind vxlan: `ip link add NAME type vxlan id ID local LOCAL
    dev DEV dstport PORT [no]learning` (lab/overlay.py builds it)."""

    id: int
    dev: str | None = None  # the underlay link in the same netns
    local: str | None = None  # outer source address
    dstport: int = 4789
    learning: bool = False  # flannel-style: remote MACs come from static FDB entries


@dataclass
class Fdb:
    """A `[[fdb]]`: `bridge fdb append MAC dev DEV dst DST` (a vxlan device's remote VTEP)."""

    netns: str
    dev: str
    mac: str
    dst: str


@dataclass
class Link:
    """One interface to create. kind: veth | bridge | dummy | macvlan | ipvlan | bond | vxlan."""

    netns: str
    name: str
    kind: str
    addresses: list[str] = field(default_factory=list)
    master: str | None = None
    up: bool = True
    mtu: int | None = None
    mac: str | None = None
    port: PortOptions | None = None
    peer: tuple[str, str] | None = None  # veth: (netns, name) of the other end
    lower: str | None = None  # macvlan/ipvlan: the link it sits on
    mode: str | None = None  # macvlan/ipvlan/bond mode
    stp: bool = False  # bridge
    vlan_filtering: bool = False  # bridge
    vxlan: VxlanSpec | None = None  # vxlan


@dataclass
class Netns:
    name: str
    lo: bool = True  # lo up (a fresh namespace has it down; real hosts have it up)
    sysctl: dict[str, str] = field(default_factory=dict)
    nft: str | None = None  # an nft ruleset loaded inside the namespace
    iptables: str | None = None  # iptables-save text loaded by iptables-nft-restore


@dataclass
class Route:
    netns: str
    dst: str  # "default" or a CIDR
    via: str | None = None
    dev: str | None = None
    metric: int | None = None
    onlink: bool = False  # gateway taken as on the link, whatever the device's subnets


@dataclass
class Listen:
    """A TCP listener the lab keeps running in `netns` (for [[expect.tcp]])."""

    netns: str
    port: int


@dataclass
class CniStep:
    """One `[[cni]]` table: attach `container` to the network `config` from `netns`
    (lab/cni.py runs it)."""

    netns: str  # node namespace the plugin runs in
    container: str  # namespace given as CNI_NETNS
    ifname: str  # CNI_IFNAME
    name: str  # the network's name
    version: str  # cniVersion
    plugins: list[dict[str, Any]]  # each plugin's own config, in ADD order
    runtime: dict[str, Any] = field(default_factory=dict)  # capability args (portMappings…)
    addresses: list[str] = field(default_factory=list)  # what IPAM must hand out (checked)
    up: bool = True  # False: the container's interface is set down after ADD

    @property
    def types(self) -> list[str]:
        return [str(p["type"]) for p in self.plugins]

    def interfaces(self) -> list[tuple[str, str]]:
        """(scenario namespace, interface) names this step is known to create or use,
        so a scenario may name them as culprits: the container's interface, the
        bridge plugin's bridge and the macvlan plugin's master in the node."""
        out = [(self.container, self.ifname)]
        for p in self.plugins:
            if p["type"] == "bridge":
                out.append((self.netns, str(p.get("bridge", "cni0"))))
            if p["type"] in ("macvlan", "ipvlan") and "master" in p:
                out.append((self.netns, str(p["master"])))
        return out


@dataclass
class DockerNetwork:
    """One `[[docker.network]]`: `docker network create` with these options."""

    name: str
    bridge: str  # its Linux bridge in the daemon's namespace (com.docker.network.bridge.name)
    subnet: str
    internal: bool = False  # --internal
    icc: bool = True  # False: -o com.docker.network.bridge.enable_icc=false


@dataclass
class DockerContainer:
    """One `[[docker.container]]`: `docker run` from the lab's busybox image, attached
    to its networks in order (the first at run, the others by `network connect`), each
    with a fixed address; stopped afterwards unless `running`."""

    name: str
    networks: dict[str, str]  # network name -> IPv4 address, in attach order
    command: list[str] = field(default_factory=lambda: ["sleep", "100000"])
    publish: list[str] = field(default_factory=list)  # docker run -p values
    running: bool = True

    @property
    def netns(self) -> str:
        """How scenarios, expectations and vethtrace name its namespace."""
        return f"docker:{self.name}"


@dataclass
class DockerSetup:
    """The `[docker]` table: a Docker daemon of the lab's own in `netns` (lab/docker.py)."""

    netns: str
    networks: list[DockerNetwork] = field(default_factory=list)
    containers: list[DockerContainer] = field(default_factory=list)

    def gateways(self) -> list[str]:
        """The addresses Docker gives its networks' bridges (each subnet's first host)."""
        out = []
        for n in self.networks:
            net = ipaddress.ip_network(n.subnet)
            out.append(f"{next(net.hosts())}/{net.prefixlen}")
        return out

    def container(self, netns_name: str) -> DockerContainer | None:
        """The container a scenario name such as `docker:web` means, if any."""
        return next((c for c in self.containers if c.netns == netns_name), None)


@dataclass
class Neigh:
    netns: str
    dev: str
    ip: str
    mac: str


@dataclass
class PingExpect:
    """`vethtrace ping --from SOURCE NETNS TO` should (ok) or should not reach TO."""

    source: str
    netns: str
    to: str
    ok: bool
    size: int | None = None  # payload bytes; sent with "don't fragment"


@dataclass
class TcpExpect:
    """A TCP connection from SOURCE to TO:PORT should (ok) or should not be accepted."""

    source: str
    netns: str
    to: str
    port: int
    ok: bool


@dataclass
class Culprit:
    netns: str
    interface: str | None  # None: the namespace only (a name the lab cannot know,
    # e.g. the random host-side veth a CNI plugin creates)

    def matches(self, prefix: str, netns: str | None, interface: str | None) -> bool:
        """Is (netns, interface), with lab prefix `prefix`, this culprit? A culprit
        naming only its namespace accepts any interface there."""
        return netns == prefix + self.netns and self.interface in (None, interface)


@dataclass
class Expect:
    pings: list[PingExpect] = field(default_factory=list)
    tcp: list[TcpExpect] = field(default_factory=list)
    verdict: str | None = None
    culprit: Culprit | None = None
    reason: str | None = None
    rules: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    name: str
    summary: str
    description: str
    path: Path
    netns: list[Netns]
    links: list[Link]
    routes: list[Route] = field(default_factory=list)
    neighs: list[Neigh] = field(default_factory=list)
    fdb: list[Fdb] = field(default_factory=list)  # vxlan remote VTEPs
    cni: list[CniStep] = field(default_factory=list)  # run after everything else
    listen: list[Listen] = field(default_factory=list)
    docker: DockerSetup | None = None  # started after the CNI steps
    expect: Expect = field(default_factory=Expect)

    @property
    def broken(self) -> bool:
        """Broken: something is misconfigured on purpose — a verdict other than delivered,
        a ping expected to fail, or a culprit / check rules named."""
        exp = self.expect
        if exp.verdict not in (None, "delivered") or exp.culprit or exp.rules:
            return True
        return any(not p.ok for p in exp.pings) or any(not t.ok for t in exp.tcp)

    def addresses_in(self, netns: str) -> list[str]:
        """CIDRs the lab gives namespace `netns`: its links' and its CNI attachments'."""
        own = [a for lk in self.links_in(netns) for a in lk.addresses]
        own += [a for c in self.cni if c.container == netns for a in c.addresses]
        if self.docker is not None and self.docker.netns == netns:
            own += self.docker.gateways()
        box = self.docker.container(netns) if self.docker else None
        if box is not None and self.docker is not None:
            prefixes = {n.name: n.subnet.split("/")[1] for n in self.docker.networks}
            own += [f"{ip}/{prefixes[net]}" for net, ip in box.networks.items()]
        return own

    def links_in(self, netns: str) -> list[Link]:
        return [link for link in self.links if link.netns == netns]

    def link(self, netns: str, name: str) -> Link | None:
        for link in self.links:
            if link.netns == netns and link.name == name:
                return link
        return None


# ---------------------------------------------------------------- finding files


def shipped_dir() -> Path:
    """Where the shipped scenarios live: package data (vethtrace/lab/scenarios)."""
    return packaged("lab", "scenarios")


def labs_dir() -> Path:
    """The scenarios in use: the shipped ones, or VETHTRACE_LABS (a folder of .toml files)."""
    env = os.environ.get("VETHTRACE_LABS")
    return Path(env) if env else shipped_dir()


def scenario_paths() -> list[Path]:
    return sorted(labs_dir().glob("*.toml"), key=lambda p: p.stem)


def scenarios() -> list[str]:
    """Names of every scenario shipped (file stems), sorted."""
    return [p.stem for p in scenario_paths()]


def load(name: str) -> Scenario:
    """A scenario by name (NAME.toml in labs_dir()) or by path to a .toml file."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"no scenario file {name}")
    else:
        path = labs_dir() / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(scenarios()) or "none"
            raise UserError(f"unknown lab scenario {name!r} (known: {known})")
    return load_path(path)


def load_path(path: Path) -> Scenario:
    from vethtrace.lab.parse import parse  # here: parse.py builds this module's dataclasses

    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    return parse(data, path)
