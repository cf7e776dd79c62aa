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
        from mmdet_runsafe.start import start_tool
        start_tool()

Importing the module changes nothing; ``start_tool`` changes only the process's handlers of
those two signals, that one warning filter, and what its forked processes print of a broken
connection to it.
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
    waited for it for minutes.)"""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() == owner:
            for s in SIGNALS:  # a second signal must not cut the clean-up or the exit short
                signal.signal(s, signal.SIG_IGN)
            if hasattr(signal, 'SIGCHLD'):  # workers that a group's SIGTERM ended are no error
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (PyTorch's handler raised one)
            action(signum)
        elif signum != signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return {s: signal.signal(s, handler) for s in SIGNALS}


def _quiet_broken_connections(args):
    if not issubclass(args.exc_type, ConnectionError):
        threading.__excepthook__(args)


def _in_a_forked_process():
    """A thread of a process forked from the tool (a DataLoader worker's, handing a tensor over
    to the tool) finds its connection to the tool broken only when the tool has stopped, which
    the tool says itself: its traceback (BrokenPipeError, ConnectionResetError) says nothing."""
    threading.excepthook = _quiet_broken_connections


def report(signum, outcome: str = '') -> None:
    """The one line for a tool stopped by ``signum``, on a line of its own (a progress bar may
    be mid-line); ``outcome`` says what is left."""
    sys.stdout.flush()
    print(f'\nerror: interrupted by {signal.Signals(signum).name}{outcome and "; " + outcome}',
          file=sys.stderr, flush=True)


def start_tool():
    """A tool's first call: the signals end it in one line, the import notices are not shown,
    and its forked processes print no traceback of a broken connection to it."""
    def stop(signum):
        report(signum)
        raise SystemExit(128 + signum)  # through the finally blocks, without a traceback

    on_signals(stop)
    if hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_in_a_forked_process)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)
