"""Errors that are the user's to fix: the tools print their message on one line, no traceback.

Every one is an :class:`InputError`; a checkpoint that cannot be read or does not fit is a
:class:`CheckpointError`, one whose write was cut short a :class:`TruncatedCheckpointError`
(resuming passes over it for an earlier one).

A library function's message names its arguments as its caller wrote them (``part='neck'``,
``force=True``), never a command-line flag: it is built from text and :class:`Argument` parts,
which ``str()`` words as ``name=value`` and our tools as the flag that sets the argument
(``cli.one_line_errors``: ``--part neck``, ``--force``).
"""
from typing import Any, Callable, NamedTuple


class Argument(NamedTuple):
    """An argument of a library function, named in an error message: ``name=value``, or
    ``name=...`` where the message asks for one without a value in mind."""
    name: str
    value: Any = ...

    def __str__(self):
        return f'{self.name}={"..." if self.value is ... else repr(self.value)}'


class NamesArguments:
    """An error whose message is made of text and :class:`Argument` parts."""

    def __init__(self, *parts):
        self.parts = parts
        super().__init__(''.join(map(str, parts)))

    def worded(self, name: Callable[[Argument], str]) -> str:
        """The message with each argument named by ``name`` (a tool: its flag)."""
        return ''.join(name(p) if isinstance(p, Argument) else str(p) for p in self.parts)


class InputError(NamesArguments, ValueError):
    """A bad argument, config value or file; the message names it and what is allowed."""
    user_error = True


def is_user_error(err: BaseException) -> bool:
    """Whether an exception is the user's to fix, printed on one line by the tools: an
    :class:`InputError`, or any exception whose class sets ``user_error = True`` (how a package
    that does not import this one marks its own: VanillaNet's network modules)."""
    return getattr(type(err), 'user_error', False) is True


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class TruncatedCheckpointError(CheckpointError):
    """A checkpoint whose write was cut short (a kill, a full disk): an earlier one may do."""


class OutputExistsError(NamesArguments, FileExistsError):
    """A file a function would write exists, and it was not asked to overwrite it."""


def output_exists(path: str) -> OutputExistsError:
    """The one message for a destination that exists without ``force=True``."""
    return OutputExistsError(f'{path} exists; pass ', Argument('force', True),
                             ' to overwrite it')

