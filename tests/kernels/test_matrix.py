"""The 6.1 lane of the kernel matrix, on every test run (CI included).

Boots Debian's 6.1 kernel (kprobes, matching headers) under qemu and checks,
inside the guest, that vethtrace's kprobe path works there: doctor finds
kprobes and plans them for veth_xmit and br_handle_frame, the seed lab's ping
verdict is `diverted` at veth0, and trace sees the ARP reply at both kprobes
and taken by br0, through the harness scripts/kernels/matrix.py. ~1.5 min
with a warm /var/cache/vethtrace/kernels, ~3–6 min from an empty one.
Deselect locally with `-m "not kernels"`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.privileged, pytest.mark.kernels]

MATRIX = REPO / "scripts" / "kernels" / "matrix.py"

EXPECTED = [
    "doctor-kprobes",
    "doctor-bcc-compile",
    "doctor-plan-kprobes",
    "lab-up-seed",
    "ping-verdict",
    "trace-arp-reply-veth_xmit",
    "trace-arp-reply-br_handle_frame",
    "trace-arp-reply-taken-by-br0",
]


@pytest.mark.timeout(1800)
def test_kernel_6_1_lane(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(MATRIX), "--kernels", "6.1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    print(proc.stdout)  # the table, shown by pytest on failure
    print(proc.stderr[-4000:])
    (lane,) = json.loads(out.read_text())
    assert lane["error"] == "", lane["error"]
    tests = {name: (ok, detail) for name, (ok, detail) in lane["tests"].items()}
    assert [t for t in EXPECTED if t not in tests] == [], f"checks missing: {tests}"
    failed = {name: detail for name, (ok, detail) in tests.items() if not ok}
    assert failed == {}, f"failed in the 6.1 guest (logs in {lane['log_dir']})"
    for plan in (lane["plan"], lane["trace_plan"]):  # doctor's, and the one trace attached
        assert "veth transmit=kprobe" in plan and "bridge receive=kprobe" in plan, plan
    assert proc.returncode == 0
