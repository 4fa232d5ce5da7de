"""Lab steps that run the real CNI reference plugins (bridge, ptp, macvlan, host-local,
portmap, tuning, firewall: Debian's containernetworking-plugins in /usr/lib/cni).

Container networks are built by these binaries, not by hand: labs that use them
show vethtrace the exact interfaces, routes, sysctls and iptables-nft rules a
real pod gets. A `[[cni]]` step runs a network configuration (one plugin or a
`plugins = [...]` list) with CNI_COMMAND=ADD for a container namespace, the way
libcni does: each plugin of a list gets the network's name and cniVersion, the
runtime's capability arguments as runtimeConfig (only those it declares in
`capabilities`), and the previous plugin's result as prevResult; DEL runs the
list in reverse with the final result as prevResult.

Where it runs. The plugin process is forked from a thread inside the *node*
namespace (a lab namespace standing in for the host), so its bridge, host-side
veths, routes, ip_forward and iptables rules (iptables-nft: they land in that
namespace's nftables) all live there; CNI_NETNS is the lab's container
namespace. host-local keeps its IPAM files in a directory of the lab's own
(`dataDir`, under /run/vethtrace/labs/PREFIXNAME.cni/), never the host's
/var/lib/cni; a scenario may not set dataDir itself.

Recovery. Each attachment is recorded in the lab's state file BEFORE its ADD
runs (with the exact configs sent) and its result after, so `down` — also after
an `up` that was killed half-way — runs DEL for every attachment whose node
namespace still exists, then removes the IPAM directory. DEL failures do not
stop `down`: removing the namespaces removes what the plugins made in them; the
failures are returned as notes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vethtrace import netns
from vethtrace.errors import UserError
from vethtrace.lab import state
from vethtrace.lab import tomlcheck as tc
from vethtrace.lab.scenario import CniStep

#: Where plugin binaries are looked for (Debian's package, then the upstream default).
PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
TIMEOUT = 30.0  # seconds for one plugin call
_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


class CniError(UserError):
    """A plugin call failed while building a lab."""


def plugins_of(text: str, where: str) -> tuple[str, str, list[dict[str, Any]]]:
    """A [[cni]] table's `config` (one plugin's config or a conflist) as libcni reads
    it: (network name, cniVersion, each plugin's own config in ADD order). Raises
    tomlcheck.Bad naming what is wrong (parse.py checks the rest of the table)."""
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise tc.Bad(f"{where}: config is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise tc.Bad(f"{where}: config must be a JSON object")
    name, version = conf.get("name"), conf.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise tc.Bad(f'{where}: config needs "name" (the network name)')
    if not isinstance(version, str):
        raise tc.Bad(f'{where}: config needs "cniVersion" (e.g. "1.0.0")')
    if "plugins" in conf:  # a conflist
        plugins = conf["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise tc.Bad(f'{where}: "plugins" must be a non-empty list')
    elif "type" in conf:  # a single plugin's config
        plugins = [{k: v for k, v in conf.items() if k not in ("name", "cniVersion")}]
    else:
        raise tc.Bad(f'{where}: config needs "type" or a "plugins" list')
    for i, p in enumerate(plugins, 1):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str):
            raise tc.Bad(f'{where}: plugin #{i} needs a "type"')
        if not _TYPE.match(p["type"]):  # it becomes a file name under PLUGIN_DIRS
            raise tc.Bad(f"{where}: plugin type {p['type']!r} is not a plugin name")
        ipam = p.get("ipam")
        if isinstance(ipam, dict) and "dataDir" in ipam:
            raise tc.Bad(
                f"{where}: ipam dataDir is set by the lab (a per-lab directory); remove it"
            )
    return name, version, plugins


# ---------------------------------------------------------------- running plugins


def ipam_dir(st: state.LabState) -> Path:
    """The lab's own IPAM state directory (host-local's dataDir)."""
    return state.STATE_DIR / f"{st.prefix}{st.name}.cni"


def netconfs(step: CniStep, data_dir: Path) -> list[dict[str, Any]]:
    """What each plugin of the list gets on stdin (before prevResult), as libcni builds
    it: its own config plus name and cniVersion, runtimeConfig holding only the
    capability arguments it declares, host-local pointed at the lab's dataDir."""
    out = []
    for p in step.plugins:
        conf = copy.deepcopy(p)
        conf["name"], conf["cniVersion"] = step.name, step.version
        caps = conf.get("capabilities")
        if isinstance(caps, dict):
            rt = {k: v for k, v in step.runtime.items() if caps.get(k) is True}
            if rt:
                conf["runtimeConfig"] = rt
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam["dataDir"] = str(data_dir)
        out.append(conf)
    return out


def plugin_path(kind: str) -> str:
    for d in PLUGIN_DIRS:
        path = os.path.join(d, kind)
        if os.access(path, os.X_OK):
            return path
    raise CniError(
        f"CNI plugin {kind!r} not found in {', '.join(PLUGIN_DIRS)} "
        "(install containernetworking-plugins; ./run setup does)"
    )


def _call(command: str, rec: dict[str, Any], conf: dict[str, Any], prev: Any) -> Any:
    """Run one plugin from a thread inside the node namespace; its JSON result."""
    binary = plugin_path(str(conf["type"]))
    stdin = dict(conf)
    if prev is not None:
        stdin["prevResult"] = prev
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": rec["id"],
        "CNI_NETNS": os.path.join(netns.NETNS_RUN_DIR, rec["container"]),
        "CNI_IFNAME": rec["ifname"],
        "CNI_PATH": ":".join(PLUGIN_DIRS),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }

    def job() -> subprocess.CompletedProcess[str]:
        if netns.current_inode() == netns.ROOT_INODE:  # never in the root namespace
            raise RuntimeError(f"refusing to run a CNI plugin in the root namespace ({rec})")
        return subprocess.run(
            [binary], input=json.dumps(stdin), env=env, capture_output=True, text=True,
            timeout=TIMEOUT, check=False,
        )  # fmt: skip

    what = f"CNI {conf['type']} {command} for {rec['container']}/{rec['ifname']}"
    try:
        res = netns.run_in(rec["node"], job)
    except subprocess.TimeoutExpired:
        raise CniError(f"{what}: no answer within {TIMEOUT:.0f} s") from None
    if res.returncode != 0:
        raise CniError(f"{what}: {_error_text(res)}")
    if command != "ADD":
        return None
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise CniError(f"{what}: the plugin printed no JSON result") from None


def _error_text(res: subprocess.CompletedProcess[str]) -> str:
    try:
        err = json.loads(res.stdout)
        msg = str(err.get("msg", "failed"))
        details = err.get("details")
        return f"{msg}: {details}" if details else msg
    except (ValueError, AttributeError):
        text = (res.stderr or res.stdout).strip().splitlines()
        return text[0] if text else f"exit status {res.returncode}"


def add_all(steps: list[CniStep], real: dict[str, str], st: state.LabState) -> None:
    """ADD every step in order; each attachment is recorded before it is made."""
    data_dir = ipam_dir(st)
    for step in steps:
        rec: dict[str, Any] = {
            "node": real[step.netns],
            "container": real[step.container],
            "ifname": step.ifname,
            "id": f"vethtrace-{real[step.container]}-{step.ifname}",
            "plugins": netconfs(step, data_dir),
            "result": None,
        }
        st.cni.append(rec)
        st.save()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        result = None
        for conf in rec["plugins"]:
            result = _call("ADD", rec, conf, result)
        rec["result"] = result
        st.save()
        got = sorted(str(ip.get("address")) for ip in (result or {}).get("ips", []))
        if step.addresses and got != sorted(step.addresses):
            raise CniError(
                f"CNI {step.name} for {rec['container']}/{step.ifname} gave "
                f"{', '.join(got) or 'no address'}, the scenario says {', '.join(step.addresses)}"
            )
        if not step.up:
            _set_down(rec["container"], step.ifname)


def _set_down(container: str, ifname: str) -> None:
    from pyroute2 import IPRoute

    def job() -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise CniError(f"{container}: no link {ifname} after CNI ADD")
            ipr.link("set", index=found[0], state="down")

    netns.run_in(container, job)


def teardown(st: state.LabState) -> list[str]:
    """DEL every recorded attachment (reverse order, each list reversed) whose node
    namespace still exists, then remove the lab's IPAM directory. Returns notes
    about DELs that failed; never raises for them."""
    notes = []
    for rec in reversed(st.cni):
        if not netns.exists(rec["node"]):
            continue  # the namespace, and all the plugins made in it, is gone
        for conf in reversed(rec["plugins"]):
            try:
                _call("DEL", rec, conf, rec.get("result"))
            except (CniError, OSError, RuntimeError) as exc:
                notes.append(str(exc))
    shutil.rmtree(ipam_dir(st), ignore_errors=True)
    return notes
