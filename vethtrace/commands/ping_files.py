"""Where `ping --write F --pcap P` puts its evidence: as it arrives, not at the end.

An incident is what people interrupt: a ping that hangs gets Ctrl-C, a
supervisor sends SIGTERM. So both files are opened before anything starts
(a path that cannot be written fails at once, not after the run), every
sniffed frame goes to the pcapng and every event to the recording as
`execute` collects them (flushed each batch), and an interrupted run still
closes both as valid files: the pcapng as it stands (tshark reads it), the
recording with an end record that says `"interrupted": "SIGINT"` (or
"SIGTERM"), which `report` reads and says so.

If the run is interrupted before the echo could leave (probes compiling,
namespaces being read), there is no plan yet: the recording then has the
header and the end record only, which `report` reads as an empty run.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from vethtrace.errors import UserError

if TYPE_CHECKING:
    from vethtrace.collect.pcapng import PcapngWriter
    from vethtrace.collect.sniff import Frame
    from vethtrace.commands.ping import Run
    from vethtrace.model import ProbeEvent
    from vethtrace.record import Recorder


class PingFiles:
    """The recording and the pcapng of one ping; either may be None."""

    def __init__(self, write: str | None, pcap: str | None) -> None:
        self.write, self.pcap = write, pcap
        self.rec: Recorder | None = None
        self.pcap_writer: PcapngWriter | None = None
        if pcap:
            from vethtrace.collect.pcapng import PcapngWriter

            try:
                self._pcap_file: BinaryIO = open(pcap, "wb")  # noqa: SIM115
            except OSError as exc:
                raise UserError(f"cannot write {pcap}: {exc.strerror}") from None
            self.pcap_writer = PcapngWriter(self._pcap_file)
            self._pcap_file.flush()  # a valid (empty) pcapng from the start
        if write:
            from vethtrace.record import Recorder

            try:  # created now, a header only: a bad path fails before the run, and
                # an interruption before the run started still leaves a valid file
                self.rec = Recorder(write, command=sys.argv, pcap=pcap)
            except UserError:
                self.close()
                raise
        self.started = False
        self.names: dict[int, tuple[str, str | None]] = {}

    def start(self, run: Run, probe_plan: Any) -> None:
        """The run is about to send: the header (with ping's plan) and the topology."""
        # a container's namespace is named as everywhere else (docker:web), and its
        # packets carry a comment naming the container (collect/pcapng.py)
        self.names = {n.inode: (n.name, n.container) for n in run.topo.namespaces}
        if not self.write or self.started:
            return
        from vethtrace.record import Recorder, ping_context

        self.started = True
        if self.rec is not None:
            self.rec.abandon()  # rewritten from the start, now with ping's context
        context = ping_context(run.plan, run.warnings)
        self.rec = Recorder(
            self.write, command=sys.argv, plan=probe_plan, pcap=self.pcap, ping=context
        )
        self.rec.topology(run.topo)

    def add(self, events: list[ProbeEvent], frames: list[Frame]) -> None:
        """What execute just collected: events to the recording, frames to the pcapng."""
        if self.rec is not None and self.started:
            for ev in sorted(events, key=lambda e: e.ts_ns):
                self.rec.event(ev)
            if events:
                self.rec.flush()
        w = self.pcap_writer
        if w is not None and frames:
            for fr in sorted(frames, key=lambda f: f.event.ts_ns):
                w.sniffed(fr, self.names)
            self._pcap_file.flush()

    def finish(self, run: Run) -> None:
        """The run ended normally: findings, verdict, the end record."""
        if self.write and not self.started:
            self.start(run, run.probe_plan)
        if self.rec is not None:
            for f in run.findings:
                self.rec.finding(f)
            for ev in run.nftrace:
                self.rec.nftrace(ev)
            if run.verdict is not None:
                self.rec.verdict(run.verdict)
            self.rec.close(lost=run.lost, ping={"notes": run.notes, "timings": run.timings})
        self.close()

    def interrupted(self, signal_name: str) -> None:
        """Cut short: close both as valid files, marked so."""
        if self.rec is not None:
            self.rec.close(interrupted=signal_name)
        self.close()

    def close(self) -> None:
        if self.pcap_writer is not None:
            with contextlib.suppress(OSError):
                self.pcap_writer.close()
                self._pcap_file.close()
            self.pcap_writer = None
