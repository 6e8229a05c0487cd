"""Notes: the one-line messages a long operation sends its caller (the CLI prints them)."""

from __future__ import annotations

from typing import Protocol


class NoteReporter(Protocol):
    """Anything with `note(message)`, e.g. the job's Reporter or the CLI's."""

    def note(self, message: str) -> None: ...


class SilentNotes:
    """A NoteReporter that drops every note (the default of library calls)."""

    def note(self, message: str) -> None:
        pass
