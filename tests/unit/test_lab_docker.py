"""The `[docker]` table of a lab scenario: what the docker CLI will be asked to do is
checked before anything starts (one line naming the file and the problem), and
containers become namespaces (`docker:NAME`) for the expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from vethtrace.errors import UserError
from vethtrace.lab.scenario import load, load_path

GOOD = """
name = "{name}"
summary = "s"
[[netns]]
name = "host"
[docker]
netns = "host"
[[docker.network]]
name = "shop"
bridge = "shop0"
subnet = "172.30.1.0/24"
icc = false
[[docker.network]]
name = "back"
bridge = "back0"
subnet = "172.30.2.0/24"
internal = true
[[docker.container]]
name = "web"
networks = {{ shop = "172.30.1.2", back = "172.30.2.2" }}
publish = ["8080:80"]
command = ["httpd", "-f"]
[[docker.container]]
name = "db"
networks = {{ back = "172.30.2.3" }}
running = false
{extra}
[[expect.ping]]
from = "docker:web"
netns = "docker:db"
to = "172.30.2.3"
ok = false
[[expect.ping]]
from = "host"
netns = "docker:web"
to = "172.30.1.2"
ok = true
"""


def write(tmp_path: Path, extra: str = "", name: str = "d") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(GOOD.format(name=name, extra=extra))
    return path


def test_docker_table_parsed(tmp_path: Path) -> None:
    scn = load_path(write(tmp_path, '[expect]\nculprit = { netns = "host", interface = "back0" }'
                                    '\nreason = "r"\nrules = ["x"]'))  # fmt: skip
    d = scn.docker
    assert d is not None and d.netns == "host"
    assert [(n.name, n.bridge, n.icc, n.internal) for n in d.networks] == [
        ("shop", "shop0", False, False), ("back", "back0", True, True)]  # fmt: skip
    web = d.container("docker:web")
    assert web is not None and list(web.networks) == ["shop", "back"]  # attach order kept
    assert web.publish == ["8080:80"] and web.command == ["httpd", "-f"] and web.running
    assert d.container("docker:db") is not None and not d.container("docker:db").running  # type: ignore[union-attr]
    assert scn.addresses_in("docker:web") == ["172.30.1.2/24", "172.30.2.2/24"]
    assert scn.addresses_in("host") == ["172.30.1.1/24", "172.30.2.1/24"]  # the gateways
    assert scn.broken


BAD = {
    "undeclared-daemon-netns": ('netns = "host"', 'netns = "nohost"', "'nohost' is not declared"),
    "unknown-network": ('back = "172.30.2.3"', 'nope = "172.30.2.3"', "'nope' is not a"),
    "outside-subnet": ('back = "172.30.2.3"', 'back = "172.30.9.3"', "not a host address"),
    "gateway": ('back = "172.30.2.3"', 'back = "172.30.2.1"', "gateway"),
    "twice": ('back = "172.30.2.3"', 'back = "172.30.2.2"', "given twice"),
    "overlap": ('subnet = "172.30.2.0/24"', 'subnet = "172.30.1.128/25"', "overlaps"),
    "reserved-name": ('name = "back"', 'name = "host"', "not a usable network name"),
    "bad-publish": ('["8080:80"]', '["eighty"]', "is not like"),
    "bad-command": ('["httpd", "-f"]', "[]", "non-empty list"),
    "container-as-route-netns": ("", "", "is not declared in [[netns]]"),
    "unknown-container": ('from = "docker:web"', 'from = "docker:nope"', "docker:NAME"),
    "culprit-iface": ("", "", "interface 'eth5'"),
}
EXTRA = {
    "container-as-route-netns": (
        '[[route]]\nnetns = "docker:web"\ndst = "default"\nvia = "1.2.3.4"'
    ),
    "culprit-iface": (
        '[expect]\nculprit = { netns = "docker:web", interface = "eth5" }\nreason = "r"'
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_docker_tables(tmp_path: Path, case: str) -> None:
    old, new, message = BAD[case]
    path = write(tmp_path, EXTRA.get(case, ""))
    text = path.read_text()
    if old:
        assert old in text, case
        path.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as exc:
        load_path(path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["docker-net", "docker-icc-off", "docker-internal",
                                  "docker-port-stopped", "docker-two-networks"])  # fmt: skip
def test_shipped_docker_labs(name: str) -> None:
    scn = load(name)
    assert scn.docker is not None and scn.docker.netns == "host"
    culprit = scn.expect.culprit
    if culprit is not None:  # the culprits are the networks' bridges Docker is told to name
        assert culprit.interface in {n.bridge for n in scn.docker.networks}
