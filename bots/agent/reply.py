"""What the agent produced for one message: the text, how it was made, what it cites, the gate's word."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bots.agent.retrieval import Passage
from bots.core.gate import Verdict

Mode = Literal["generated", "composed", "apology", "refusal"]


@dataclass(slots=True)
class Reply:
    text: str  # the answer without its sources line
    mode: Mode
    language: str  # the language wanted for it ("zh" / "en")
    sources: list[Passage] = field(default_factory=list)  # what its [n] markers cite, in order
    passages: list[Passage] = field(default_factory=list)  # everything retrieved for it
    verdicts: list[Verdict] = field(default_factory=list)  # the gate's verdict on each try
    sources_note: str = ""  # the line appended under the answer ("\n\nSources: [1] ...")

    @property
    def full(self) -> str:
        return self.text + self.sources_note
