"""What our tools set up on their first line, before the imports that take seconds (torch,
MMEngine, MMDetection): the standard library only, so that it is in place at once.

- SIGINT (Ctrl-C) and SIGTERM (a kill, a job scheduler) end the tool with one line,
  ``error: interrupted by SIGINT``, and the signal's exit status, where Python printed a
  traceback of the import machinery for Ctrl-C and ended without a word at SIGTERM. While a
  tool works, ``mmdet_runsafe.cli.interruptible`` takes the signals over, to clean up and say
  what is left.
- The notices that its libraries' imports print on every start and that a user can do nothing
  about (``pkg_resources is deprecated as an API``, from MMEngine's and MMDetection's imports
  under setuptools >= 67) are not shown; no other warning is filtered.

A tool calls ``start_tool`` first, under ``if __name__ == '__main__':`` (importing a tool to
read its parser changes nothing)::

    if __name__ == '__main__':  # first: the imports below take seconds
        from mmdet_runsafe_start import start_tool
        start_tool()

Importing the module changes nothing; ``start_tool`` changes only the process's handlers of
those two signals and that one warning filter.
"""
import os
import signal
import sys
import threading
import warnings

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_signals(action):
    """Call ``action(signum)`` at SIGINT or SIGTERM in this process; return the handlers
    replaced. A process forked from this one (a DataLoader worker) inherits the handler, and
    Ctrl-C reaches the whole process group: there SIGINT is ignored and SIGTERM ends it as by
    default, and this process's clean-up ends its workers. (A worker that stopped as its tool
    did, raising where it was with SIGTERM ignored, could not be ended, and the tool's exit
    waited for it for minutes.) After Ctrl-C, a worker's thread that was handing a tensor to
    the stopping tool finds the connection broken: that says nothing, and prints nothing."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() == owner:
            for s in SIGNALS:  # a second signal must not cut the clean-up or the exit short
                signal.signal(s, signal.SIG_IGN)
            action(signum)
        elif signum == signal.SIGINT:
            threading.excepthook = _quiet_broken_connections
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return {s: signal.signal(s, handler) for s in SIGNALS}


def _quiet_broken_connections(args):
    if not issubclass(args.exc_type, ConnectionError):
        threading.__excepthook__(args)


def report(signum, outcome: str = '') -> None:
    """The one line for a tool stopped by ``signum``, on a line of its own (a progress bar may
    be mid-line); ``outcome`` says what is left."""
    sys.stdout.flush()
    print(f'\nerror: interrupted by {signal.Signals(signum).name}{outcome and "; " + outcome}',
          file=sys.stderr, flush=True)


def start_tool():
    """A tool's first call: the signals end it in one line, the import notices are not shown."""
    def stop(signum):
        report(signum)
        raise SystemExit(128 + signum)  # through the finally blocks, without a traceback

    on_signals(stop)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)
