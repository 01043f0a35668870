"""What a `socirun` subprocess left behind, with its JSON-lines events parsed (shared by the CLI tests)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @classmethod
    def of_process(cls, proc: subprocess.CompletedProcess[str]) -> CliResult:
        return cls(proc.returncode, proc.stdout, proc.stderr)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The `--progress json` events socirun wrote on stderr (other lines are skipped)."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def finished(self) -> dict[str, Any]:
        done = self.of("pull_finished")
        assert len(done) == 1, self.stderr
        return done[0]
