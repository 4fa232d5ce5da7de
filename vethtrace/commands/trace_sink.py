"""Where everything `vethtrace trace` says goes: event lines or JSON on stdout,
notices and status on stderr (with --json, or when stdout is not a terminal),
the recording; and the counts its summary reports.

Apart from commands/trace.py because this is the part that needs rich and the
namespace names: trace imports it once the probes are attached, so neither
delays them (issue #18: start to attached).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from vethtrace.clock import Clock
from vethtrace.console import make_console
from vethtrace.render import trace as render

LOST_NOTICE_S = 1.0  # at most one loss notice (stderr, --json, recording) this often
SLICE = 64  # events shown between two looks at the clock (~10 ms on a busy machine)


class Sink:
    """Where everything trace says goes: lines or JSON on stdout, notices on
    stderr, the recording. Counts what the summary reports."""

    def __init__(self, as_json: bool) -> None:
        self.out = make_console()
        self.status = make_console(stderr=True) if as_json or not self.out.is_terminal else self.out
        self.as_json, self.clock = as_json, Clock()
        self.names: render.NetnsNames  # by begin(), once "tracing…" is said
        self.summary = render.Summary()
        self.rec: Any = None
        self.t0: int | None = None
        self.lost = 0
        self.unshown = 0  # read after the deadline, not shown
        self._lost_reported = 0
        self._lost_notice_at = 0.0
        self.width = render.line_width(self.out)

    def begin(self) -> None:
        """Before the first event (events need it): the namespace names (~15 ms:
        every namespace enumerated, container runtimes asked), the column header."""
        self.names = render.NetnsNames()
        if not self.as_json:
            self.out.print(render.header(self.width), style="bold", highlight=False)

    def events(self, events: list[Any], deadline: float | None) -> None:
        for start in range(0, len(events), SLICE):
            if deadline is not None and time.monotonic() >= deadline:
                self.unshown += len(events) - start
                return
            for ev in events[start : start + SLICE]:
                self._event(ev)
            if self.as_json or self.width is None:
                sys.stdout.flush()

    def _event(self, ev: Any) -> None:
        if self.t0 is None:
            self.t0 = ev.ts_ns
        self.summary.add(ev)
        if self.rec is not None:
            self.rec.event(ev)
        if self.as_json:
            print(render.json_line(ev, self.names, self.clock), flush=False)
        elif self.width is None:  # piped: no styles to render, ~10x faster than rich
            sys.stdout.write(render.line(ev, self.t0, self.names).plain + "\n")
        else:
            self.out.print(render.line(ev, self.t0, self.names, self.width), soft_wrap=True)

    def nft(self, events: list[Any]) -> None:
        """Rule verdicts from the kernel's nftables trace, as lines among the events."""
        if not events:
            return
        from vethtrace.render import nftrace as nftrender

        for ev in events:
            if self.t0 is None:
                self.t0 = ev.ts_ns
            if self.rec is not None:
                self.rec.nftrace(ev)
            name = self.names.name(ev.netns)
            if self.as_json:
                print(json.dumps(nftrender.json_obj(ev, name), separators=(",", ":")))
            else:
                self.out.print(nftrender.line(ev, self.t0, self.names.name), soft_wrap=True)

    def _notice(self, kind: str, data: dict[str, Any], text: str, style: str) -> None:
        ts = time.monotonic_ns()
        record = {"ts_ns": ts, "time": self.clock.rfc3339(ts), **data}
        if self.rec is not None:
            self.rec.notice(kind, record)
        if self.as_json:
            print(render.notice_line(kind, record), flush=True)
        self.status.print(f"vethtrace trace: {text}", style=style, highlight=False)

    def check_lost(self, total: int, force: bool = False) -> None:
        """A `lost` notice when the kernel's count grew, at most once a second
        (the rest is added to the next one), and always at the end."""
        self.lost = total
        new = total - self._lost_reported
        now = time.monotonic()
        if new <= 0 or (not force and now - self._lost_notice_at < LOST_NOTICE_S):
            return
        self._lost_reported, self._lost_notice_at = total, now
        self._notice(
            "lost",
            {"lost": new, "total": total},
            f"{new:,} events lost ({total:,} so far): the ring buffer was full; "
            "narrow FILTER or -n, or raise --buffer",
            "bold red",
        )

    def scope(self, change: Any) -> None:
        data = {
            "change": change.change,
            "netns": change.netns,
            "inode": change.inode,
            "interface": change.interface,
            "left": change.left,
        }
        style = "yellow" if change.change in ("netns-gone", "iface-gone") else "dim"
        if change.change == "netns-back":
            data["traced"] = change.adopted
        self._notice("scope", data, change.text(), style)
