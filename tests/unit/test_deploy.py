"""deploy/kubernetes/daemonset.yaml against the Kubernetes schema, offline
(kubernetes-validate ships the JSON schemas of every Kubernetes release; strict:
an unknown or misspelt field fails), and against what docs/agent.md promises:
host network and PIDs, the mounts the agent needs and nothing more, the token
from a Secret, listening on the node's address only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate as kv
import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "daemonset.yaml"
VERSIONS = ["1.29.0", "1.33.0", kv.latest_version()]


def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_daemonset_is_valid_kubernetes(version: str) -> None:
    kv.validate(manifest(), version, strict=True)


def test_the_schema_catches_a_misspelt_field() -> None:
    bad = copy.deepcopy(manifest())
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_daemonset_has_what_the_agent_needs_and_nothing_more() -> None:
    spec = manifest()["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {
        "BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE", "NET_RAW",
    }  # fmt: skip
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host == {"/sys/kernel/btf", "/sys/fs/bpf", "/sys/kernel/tracing", "/run/netns",
                    "/lib/modules"}  # fmt: skip
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/btf", "/run/netns", "/lib/modules", "/etc/vethtrace"):
        assert mounts[path]["readOnly"] is True
    assert volumes["token"]["secret"]["secretName"] == "vethtrace-agent-token"
    args = c["args"]
    assert "--listen=$(POD_IP):7411" in args and not any("0.0.0.0" in a for a in args)
    assert "--token-file=/etc/vethtrace/token" in args
