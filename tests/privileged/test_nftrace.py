"""`--nftrace` on real rulesets in labs: the rule that dropped the ping is named
by exactly the handle `nft -a list ruleset` shows (nft input drop, reject,
a drop in a chain reached by jump, a bridge-family drop, Docker's FORWARD DROP
policy made by iptables-nft with its iptables form, a NAT rule on the path),
the fix works when pasted, nothing is left behind after runs interrupted at
random moments (after `vethtrace nftrace cleanup` where needed), and a run
without --nftrace changes no ruleset."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import VENV_BIN, as_nobody
from tests.labs import built_lab, lab_fixture, ping
from vethtrace.commands.ping import execute

pytestmark = pytest.mark.privileged

two = lab_fixture("bridge-two")


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def handle_of(ns: str, text: str, chain: str = "") -> int:
    """The handle `nft -a list ruleset` (or `list chain CHAIN`) shows on the
    (only) rule line containing text."""
    what = ["chain", *chain.split()] if chain else ["ruleset"]
    hits = [ln for ln in nft(ns, "-a", "list", *what).splitlines() if text in ln]
    assert len(hits) == 1, hits
    m = re.search(r"# handle (\d+)", hits[0])
    assert m, hits[0]
    return int(m.group(1))


def our_tables(ns: str) -> list[str]:
    return [ln for ln in nft(ns, "list", "tables").splitlines() if "vethtrace_trace" in ln]


@pytest.fixture
def ruleset(two):
    """Load a ruleset into a lab namespace for one test; delete its table after."""
    loaded: list[tuple[str, str]] = []

    def load(ns: str, family: str, table: str, body: str) -> None:
        nft(ns, "-f", "-", stdin=f"table {family} {table} {{\n{body}\n}}\n")
        loaded.append((ns, f"{family} {table}"))

    yield load
    for ns, table in loaded:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", *table.split()])


def _ping(lab, nftrace: bool = True):
    return execute(lab.ns("a"), lab.ns("b"), "10.0.0.2", 1, 3.0, nftrace=nftrace)


def test_nft_input_drop_names_the_handle_and_the_fix_works(two, ruleset) -> None:
    b = two.ns("b")
    ruleset(b, "inet", "vtt_f", "chain input { type filter hook input priority 0;\n"
            "icmp type echo-request counter drop\n}")  # fmt: skip
    r = _ping(two)
    assert not r.verdict.reachable
    rule = r.rule
    assert rule is not None, r.notes
    assert (rule["netns"], rule["family"], rule["table"], rule["chain"]) == (
        b, "inet", "vtt_f", "input",
    )  # fmt: skip
    assert rule["handle"] == handle_of(b, "echo-request counter")
    assert rule["verdict"] == "drop" and rule["hook"] == "input"
    assert "icmp type echo-request" in rule["rule"]
    assert r.verdict.fix[0] == rule["fix"][0]
    assert f"position {rule['handle']}" in rule["fix"][0]
    subprocess.run(rule["fix"][0], shell=True, check=True)  # the narrow accept
    assert ping(two.ns("a"), "10.0.0.2")
    assert our_tables(b) == [] and our_tables(two.ns("sw")) == []


def test_reject_is_named_reject(two, ruleset) -> None:
    b = two.ns("b")
    ruleset(b, "ip", "vtt_r", "chain input { type filter hook input priority 0;\n"
            "ip protocol icmp reject\n}")  # fmt: skip
    r = _ping(two)
    assert r.rule is not None
    assert r.rule["verdict"] == "reject"
    assert r.rule["handle"] == handle_of(b, "ip protocol icmp reject")


def test_drop_in_a_chain_reached_by_jump(two, ruleset) -> None:
    b = two.ns("b")
    ruleset(b, "inet", "vtt_j", "chain inner {\nip saddr 10.0.0.1 drop\n}\n"
            "chain input { type filter hook input priority 0;\n"
            "ip protocol icmp jump inner\n}")  # fmt: skip
    r = _ping(two)
    assert r.rule is not None
    assert r.rule["chain"] == "inner" and r.rule["hook"] == "input"
    assert r.rule["handle"] == handle_of(b, "ip saddr 10.0.0.1 drop")
    jumps = [e for e in r.nftrace if e.verdict == "jump" and e.target == "inner"]
    assert jumps, [e.verdict for e in r.nftrace]


def test_bridge_family_drop(two, ruleset) -> None:
    sw = two.ns("sw")
    ruleset(sw, "bridge", "vtt_b", "chain forward { type filter hook forward priority 0;\n"
            "ip protocol icmp drop\n}")  # fmt: skip
    r = _ping(two)
    assert r.rule is not None
    assert (r.rule["netns"], r.rule["family"], r.rule["chain"]) == (sw, "bridge", "forward")
    assert r.rule["handle"] == handle_of(sw, "ip protocol icmp drop")


def test_without_nftrace_no_ruleset_changes_and_the_rule_is_predicted(two, ruleset) -> None:
    """No table added; the culprit rule comes from the path model's static
    evaluation of the same ruleset, marked predicted, and the report says
    --nftrace would confirm it."""
    b = two.ns("b")
    ruleset(b, "inet", "vtt_n", "chain input { type filter hook input priority 0;\n"
            "icmp type echo-request drop\n}")  # fmt: skip
    before = {ns: nft(ns, "-a", "list", "ruleset") for ns in two.namespaces}
    r = _ping(two, nftrace=False)
    assert not r.verdict.reachable and r.nftrace == []
    assert {ns: nft(ns, "-a", "list", "ruleset") for ns in two.namespaces} == before
    rule = r.rule
    assert rule is not None and rule["source"] == "predicted" and not rule["confirmed"]
    assert (rule["netns"], rule["family"], rule["table"], rule["chain"]) == (
        b, "inet", "vtt_n", "input",
    )  # fmt: skip
    assert rule["handle"] == handle_of(b, "echo-request drop")
    assert rule["hook"] == "input" and rule["verdict"] == "drop"
    assert "--nftrace" in r.verdict.explanation and "predict" in r.verdict.summary
    traced = _ping(two)
    assert traced.rule is not None and traced.rule["source"] == "nftrace"
    assert traced.rule["handle"] == rule["handle"]


def test_docker_forward_drop_policy_in_iptables_form() -> None:
    with built_lab("docker-forward-drop") as lab:
        node = lab.ns("node")
        r = execute(lab.ns("c1"), lab.ns("outside"), "192.0.2.2", 1, 3.0, nftrace=True)
        assert r.rule is not None, r.notes
        assert r.rule["netns"] == node and r.rule["kind"] == "policy"
        assert (r.rule["table"], r.rule["chain"]) == ("filter", "FORWARD")
        assert r.rule["iptables"] == "-P FORWARD DROP"
        user = [e for e in r.nftrace if e.chain == "DOCKER-USER"]
        assert user and user[0].iptables == "-A DOCKER-USER -j RETURN"
        assert user[0].handle == handle_of(node, "return", "ip filter DOCKER-USER")
        assert our_tables(node) == []


def test_nat_rule_on_the_path_is_shown_accepted() -> None:
    with built_lab("docker-forward") as lab:
        node = lab.ns("node")
        r = execute(lab.ns("c1"), lab.ns("outside"), "192.0.2.2", 1, 3.0, nftrace=True)
        assert r.verdict.reachable and r.rule is None
        masq = [e for e in r.nftrace if e.rule and "masquerade" in e.rule]
        assert masq, [(e.chain, e.rule) for e in r.nftrace]
        assert masq[0].verdict == "accept" and masq[0].table == "nat"
        assert masq[0].iptables and "-j MASQUERADE" in masq[0].iptables
        assert masq[0].handle == handle_of(node, "masquerade")


def test_interrupted_runs_leave_no_table(two) -> None:
    """30 `trace --nftrace` runs stopped at random (seeded) moments by SIGINT,
    SIGTERM or SIGKILL: no vethtrace table stays (the kernel removes owned
    tables with their socket; `nftrace cleanup` sweeps whatever else)."""
    rng = random.Random(16)
    names = two.namespaces
    args = [str(VENV_BIN / "vethtrace"), "trace", "icmp", "--nftrace"]
    for n in names:
        args += ["-n", n]
    for i in range(30):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 2.0))
        p.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL]))
        p.wait(timeout=30)
        left = [t for n in names for t in our_tables(n)]
        if left:  # only possible without the owner flag: the recovery step
            subprocess.run([str(VENV_BIN / "vethtrace"), "nftrace", "cleanup"], check=True)
        assert [t for n in names for t in our_tables(n)] == [], f"run {i}"


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_report_of_an_nftrace_ping_names_the_same_rule(two, ruleset, tmp_path, as_json) -> None:
    """`report` of a `ping --nftrace --write` recording re-judges the recorded
    rule verdicts: the same rule culprit and fix, line for line (as nobody)."""
    from tests.privileged.test_report_live import _run

    b = two.ns("b")
    ruleset(b, "inet", "vtt_rp", "chain input { type filter hook input priority 0;\n"
            "icmp type echo-request counter drop\n}")  # fmt: skip
    os.chmod(tmp_path, 0o755)
    flag = ["--json"] if as_json else []
    live = _run("ping", "--from", two.ns("a"), b, "10.0.0.2", "-c", "1", "--nftrace",
                "--write", "run.vtrec", *flag, cwd=tmp_path)  # fmt: skip
    assert live.returncode == 1, live.stderr
    os.chmod(tmp_path / "run.vtrec", 0o644)
    offline = _run("report", "run.vtrec", *flag, cwd=tmp_path, user=as_nobody())
    assert offline.returncode == 1, offline.stderr
    handle = handle_of(b, "echo-request counter")
    if as_json:
        got = json.loads(offline.stdout)
        got.pop("recording")
        assert got == json.loads(live.stdout)
        assert got["rule"]["handle"] == handle and got["rule"]["source"] == "nftrace"
    else:
        _banner, *rest = offline.stdout.splitlines()
        assert rest == live.stdout.splitlines()
        assert f"rule: {b}  inet vtt_rp input handle {handle} (hook input): drop" in rest
        # woven into the echo's path: after it was received in b, before the kernel's drop
        at_b = [ln for ln in rest if f"{b}/eth0" in ln]
        kinds = ["nft" if "nftables inet vtt_rp" in ln else "received" if "received" in ln
                 else "drop" if "NETFILTER_DROP" in ln else "?" for ln in at_b]  # fmt: skip
        assert "received" in kinds and "nft" in kinds, rest
        assert kinds.index("received") < kinds.index("nft") < kinds.index("drop"), rest


def test_report_of_an_nftrace_trace_shows_the_verdicts_inline(two, ruleset, tmp_path) -> None:
    """A `trace --nftrace --write` recording: report prints the rule verdicts
    among the kernel's events, in time order, as trace did."""
    b = two.ns("b")
    ruleset(b, "inet", "vtt_rt", "chain input { type filter hook input priority 0;\n"
            "icmp type echo-request counter drop\n}")  # fmt: skip
    rec = tmp_path / "t.vtrec"
    args = [str(VENV_BIN / "vethtrace"), "trace", "icmp", "--nftrace", "--duration", "3",
            "--write", str(rec), "-n", two.ns("a"), "-n", b]  # fmt: skip
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # tracing by then (cached programs: well under a second)
    ping(two.ns("a"), "10.0.0.2")
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    out = subprocess.run([str(VENV_BIN / "vethtrace"), "report", str(rec)], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    lines = out.stdout.splitlines()
    handle = handle_of(b, "echo-request counter")
    hits = [i for i, ln in enumerate(lines) if f"inet vtt_rt input handle {handle}" in ln]
    assert hits, out.stdout
    assert "nftrace" in lines[hits[0]] and ": drop" in lines[hits[0]]
    # inline: kernel event lines of the same run come before and after it
    drops = [i for i, ln in enumerate(lines) if "NETFILTER_DROP" in ln]
    assert drops and abs(drops[0] - hits[0]) < 10, out.stdout
    js = json.loads(subprocess.run([str(VENV_BIN / "vethtrace"), "report", str(rec), "--json"],
                                   capture_output=True, text=True).stdout)  # fmt: skip
    nft_objs = [e for e in js["events"] if e.get("type") == "nftrace"]
    assert any(e["handle"] == handle and e["verdict"] == "drop" for e in nft_objs)


def test_watch_shows_rule_verdicts_under_paths_and_removes_its_tables(two, ruleset) -> None:
    """`watch --nftrace` at 100 columns (tmux): the rule that dropped the echo
    sits under its path, by handle; `q` ends it and its tables are gone."""
    from tests.conftest import new_prefix
    from tests.tmux import Tmux

    a, b = two.ns("a"), two.ns("b")
    ruleset(b, "inet", "vtt_w", "chain input { type filter hook input priority 0;\n"
            "icmp type echo-request counter drop\n}")  # fmt: skip
    ns_args = " ".join(f"-n {n}" for n in two.namespaces)
    cmd = f"{VENV_BIN}/vethtrace watch icmp {ns_args} --nftrace; echo EXIT=$?; sleep 60"
    t = Tmux(f"vethtrace-{new_prefix()}", cmd, width=100)
    try:
        t.wait_for(lambda s: " tracing " in s, 40, "probes and tables")
        assert our_tables(b), "no trace table while watch runs"
        ping(a, "10.0.0.2")
        handle = handle_of(b, "echo-request counter")
        want = f"b: inet vtt_w input #{handle}"
        screen = t.wait_for(lambda s: want in s, 15, "the rule verdict under the path")
        lines = screen.splitlines()
        k = next(i for i, ln in enumerate(lines) if want in ln)
        assert "↳ nftables" in lines[k] and lines[k].split()[-2:] == ["drop", "│"], screen
        assert "NETFILTER_DROP" in lines[k - 1], screen
        t.tmux("send-keys", "-t", "w", "q")
        t.wait_for(lambda s: "EXIT=0" in s, 15, "watch to exit")
        assert [tb for n in two.namespaces for tb in our_tables(n)] == []
    finally:
        t.kill()


def test_legacy_iptables_is_named_with_what_cannot_be_seen() -> None:
    """A legacy (x_tables) rule drops the echo in b (a lab of its own: the
    legacy table stays loaded until its namespace goes). --nftrace says it
    cannot trace it and names no nftables rule; ping without it says what is
    not seen; check reports the legacy tables."""
    from vethtrace.diagnose.check import run_rules

    with built_lab("bridge-two") as lab:
        a, b = lab.ns("a"), lab.ns("b")
        subprocess.run(["ip", "netns", "exec", b, "iptables-legacy", "-A", "INPUT", "-p", "icmp",
                        "-j", "DROP"], check=True)  # fmt: skip
        r = execute(a, b, "10.0.0.2", 1, 3.0, nftrace=True)
        assert not r.verdict.reachable and r.rule is None
        assert any(e.drop_reason == "NETFILTER_DROP" for e in r.events)
        said = " ".join(r.notes)
        assert f"{b}: legacy iptables (x_tables) tables loaded (filter)" in said, r.notes
        assert "--nftrace cannot trace" in said
        assert any("iptables-legacy-save" in f for f in r.verdict.fix), r.verdict.fix
        assert not [t for n in lab.namespaces for t in our_tables(n)]
        plain = execute(a, b, "10.0.0.2", 1, 3.0)
        assert plain.rule is None
        assert any(f"{b} has legacy iptables" in n and "neither the path model nor --nftrace"
                   in n for n in plain.notes), plain.notes  # fmt: skip
        found = [f for f in run_rules(r.topo, [b]) if f.rule == "iptables-legacy"]
        assert len(found) == 1 and found[0].netns == b and "filter" in found[0].summary
        assert not [f for f in run_rules(r.topo, [a]) if f.rule == "iptables-legacy"]
