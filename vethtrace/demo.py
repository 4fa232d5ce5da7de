"""`./run demo` (python -m vethtrace.demo [SCENARIO]): the main job on the built-in default.

Builds the `seed` lab (the classic broken bridge port) in namespaces prefixed
"vt-demo-", runs vethtrace on it the way a user would — doctor, topo, check,
ping of the target that should fail — shows what the scenario says should
come out, and always removes the lab again (also on errors, Ctrl-C, SIGTERM).
Each command is imported when it is needed, so a missing or broken one is
reported and skipped instead of hiding the others.
"""

from __future__ import annotations

import importlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from vethtrace import lab as labs
from vethtrace.console import make_console
from vethtrace.errors import ExitStatus, UserError
from vethtrace.render.lab import build_tree

PREFIX = "vt-demo-"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _command(name: str) -> Callable[..., int] | None:
    try:
        module = importlib.import_module(f"vethtrace.commands.{name}")
    except ImportError:
        return None
    run = getattr(module, "run", None)
    return run if callable(run) else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "seed"
    console = make_console()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    try:
        scn = labs.load(name)
        built = labs.up(name, PREFIX)
    except UserError as exc:
        print(f"vethtrace demo: {exc}", file=sys.stderr)
        return int(exc.status)
    try:
        problems = _show(console, built)
        for problem in problems:
            print(f"vethtrace demo: {problem}", file=sys.stderr)
        return int(ExitStatus.FINDINGS if problems else ExitStatus.OK)
    except KeyboardInterrupt:
        print("vethtrace demo: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            labs.down(scn.name, PREFIX)
            console.print(
                Text(f"\nremoved lab {scn.name}: {', '.join(built.namespaces)}", style="dim")
            )
        except UserError as exc:
            print(f"vethtrace demo: {exc}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _show(console: Any, built: labs.BuiltLab) -> list[str]:
    """Run the steps; return what did not go as the scenario says (the demo's
    exit status: a demo that hides a broken command would be worse than none)."""
    scn = built.scenario
    exp = scn.expect
    console.rule(Text(f"vethtrace lab up {scn.name}", style="bold"), align="left")
    console.print(Text(scn.summary, style="bold"))
    console.print(" ".join(scn.description.split()), soft_wrap=False)
    console.print(build_tree(scn, PREFIX), soft_wrap=False)

    nslist = [f"{PREFIX}{n.name}" for n in scn.netns]
    target = next((p for p in exp.pings if not p.ok), exp.pings[0] if exp.pings else None)
    findings = ExitStatus.FINDINGS if exp.rules else ExitStatus.OK
    steps: list[tuple[str, str, dict[str, Any], ExitStatus]] = [
        ("doctor", "vethtrace doctor", {}, ExitStatus.OK),
        ("topo", "vethtrace topo " + " ".join(f"-n {n}" for n in nslist), {"netns": nslist},
         ExitStatus.OK),
        ("check", "vethtrace check " + " ".join(f"-n {n}" for n in nslist), {"netns": nslist},
         findings),
    ]  # fmt: skip
    if target is not None:
        src, dst = built.ns(target.source), built.ns(target.netns)
        steps.append(
            (
                "ping",
                f"vethtrace ping --from {src} {dst} {target.to}",
                {"source": src, "target_netns": dst, "ip": target.to},
                ExitStatus.OK if target.ok else ExitStatus.FINDINGS,
            )
        )
    problems: list[str] = []
    for command, line, options, expected in steps:
        console.print()
        console.rule(Text(f"$ {line}", style="bold"), align="left")
        run = _command(command)
        if run is None:
            console.print(
                Text(f"(skipped: `vethtrace {command}` is not available yet)", style="yellow")
            )
            problems.append(f"`vethtrace {command}` is not available")
            continue
        started = time.monotonic()
        try:
            status = run(**options)
        except UserError as exc:
            console.print(Text(f"vethtrace {command}: {exc}", style="red"))
            problems.append(f"`{line}` failed: {exc}")
            continue
        except Exception as exc:  # a command still being written must not stop the demo
            console.print(
                Text(f"(`vethtrace {command}` failed: {type(exc).__name__}: {exc})", style="red")
            )
            problems.append(f"`{line}` failed: {type(exc).__name__}: {exc}")
            continue
        console.print(Text(f"exit {status} in {time.monotonic() - started:.1f}s", style="dim"))
        if status != expected:
            problems.append(f"`{line}` exited {status}; the {scn.name} scenario expects {expected}")

    if exp.verdict and exp.verdict != "delivered":
        console.print()
        console.rule(Text("what the scenario says should come out", style="bold"), align="left")
        where = ""
        if exp.culprit:
            where = f" at {built.ns(exp.culprit.netns)} {exp.culprit.interface or ''}".rstrip()
        console.print(Text(f"verdict {exp.verdict}{where}", style="bold"))
        if exp.reason:
            console.print(exp.reason, soft_wrap=False)
        if exp.rules:
            console.print(f"check rules: {', '.join(exp.rules)}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
