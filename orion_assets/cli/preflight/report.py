"""What the preflight checks found, by section, and how ``orion check`` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field

from orion_assets.profiles import Profile

MARKS = {"ok": "ok  ", "warn": "warn", "problem": "FAIL", "skip": "skip", "info": "    "}


@dataclass
class Finding:
    level: str  # ok | warn | problem | skip | info
    text: str


@dataclass
class Section:
    title: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, text: str) -> None:
        self.findings.append(Finding(level, text))


@dataclass
class Report:
    profile: Profile
    sections: list[Section] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def lines(self, level: str) -> list[str]:
        """``section: text`` of every finding at ``level`` (the lines ``orion check`` ends with)."""
        return [f"{s.title.split(':')[0]}: {f.text}" for s in self.sections for f in s.findings if f.level == level]

    @property
    def problems(self) -> list[str]:
        return self.lines("problem")

    @property
    def warnings(self) -> list[str]:
        return self.lines("warn")

    def render(self) -> str:
        out: list[str] = []
        for section in self.sections:
            out.append(section.title)
            out += [f"    {f.text}" if f.level == "info" else f"  {MARKS[f.level]}  {f.text}" for f in section.findings]
        out += self.plan
        return "\n".join(out)
