"""deploy/ stays in step with the CLI: the systemd unit's and the DaemonSet's
command lines parse with vethtrace's own parser into the flight recorder, and
the DaemonSet gives it what it needs (the node's network and processes,
privileges, and its recording directory on the node's disk)."""

from __future__ import annotations

import configparser
import shlex

import yaml

from tests.conftest import REPO
from vethtrace.cli import build_parser
from vethtrace.commands.record import DEFAULT_DIR
from vethtrace.recorder.when import parse_duration, parse_size

DEPLOY = REPO / "deploy"


def _recorder_args(argv: list[str]) -> dict:
    assert argv[0].endswith("vethtrace"), argv
    opts = vars(build_parser().parse_args(argv[1:]))
    assert opts["command"] == "record" and opts["continuous"], argv
    parse_size(opts["max_size"])
    if opts["max_age"]:
        parse_duration(opts["max_age"])
    return opts


def test_systemd_unit_runs_the_recorder_and_stops_it_with_sigterm() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "vethtrace-recorder.service")
    service = unit["Service"]
    opts = _recorder_args(shlex.split(service["ExecStart"]))
    assert opts["directory"] == DEFAULT_DIR
    assert service["KillSignal"] == "SIGTERM"
    assert DEFAULT_DIR.startswith(service["ReadWritePaths"].split()[0])
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_daemonset_runs_the_recorder_on_the_nodes_network_with_its_state_on_the_node() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "recorder.yaml").read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"]
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"]
    opts = _recorder_args(container["command"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = next(p for p in mounts if opts["directory"].startswith(p + "/"))
    assert "hostPath" in volumes[mounts[state]]
    assert mounts.get("/run/netns") and "/sys/kernel/btf" in mounts
    assert pod["terminationGracePeriodSeconds"] >= 10
