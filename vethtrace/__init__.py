"""vethtrace: where did my packet go across veth pairs, bridges and namespaces."""

import sys as _sys

__version__ = "0.1.0"

if _sys.argv and _sys.argv[0].rsplit("/", 1)[-1] == "vethtrace":
    # This process is the `vethtrace` command, still starting (imports, argument
    # parsing: ~35 ms): a Ctrl-C now ends it quietly with 130 instead of a
    # KeyboardInterrupt traceback; cli.main installs the real handlers
    # (vethtrace/signals.py). Only for the command: importing vethtrace as a
    # library changes no signal handling. `_signal` is built in: no import cost.
    try:
        import _signal

        def _starting(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        _signal.signal(_signal.SIGINT, _starting)
    except KeyboardInterrupt:  # it landed while this very handler was being installed
        raise SystemExit(130) from None
