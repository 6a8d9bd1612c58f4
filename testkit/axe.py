"""Accessibility audits: axe-core (bundled by axe-playwright-python) run in the page, violations grouped by impact."""

from __future__ import annotations

from dataclasses import dataclass

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

# WCAG 2.0 and 2.1, levels A and AA, plus Deque's best practices: what issue #19 asks the page to pass.
TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice")
IMPACTS = ("critical", "serious", "moderate", "minor")  # axe's own scale, worst first
BLOCKING = ("critical", "serious")  # what the suite fails on; moderate and minor are recorded (docs/decisions/0032)
AXE = Axe()


@dataclass(frozen=True)
class Violation:
    """One rule broken on one page: the rule, how bad, what it means, and the elements (CSS selectors) that break it."""

    rule: str
    impact: str
    help: str
    targets: tuple[str, ...]
    snippets: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"[{self.impact}] {self.rule} ({len(self.targets)}×): {self.help}"]
        lines += [f"    {target}  {snippet[:160]}" for target, snippet in zip(self.targets, self.snippets)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Audit:
    """Every violation axe found on the page, by impact; `blocking` are those the suite does not accept."""

    where: str
    by_impact: dict[str, tuple[Violation, ...]]

    @property
    def blocking(self) -> tuple[Violation, ...]:
        return tuple(v for impact in BLOCKING for v in self.by_impact.get(impact, ()))

    @property
    def rules(self) -> set[str]:
        return {v.rule for found in self.by_impact.values() for v in found}

    def counts(self) -> dict[str, int]:
        """Elements at fault per rule, e.g. {"color-contrast (serious)": 6}."""
        return {f"{v.rule} ({v.impact})": len(v.targets) for impact in IMPACTS for v in self.by_impact.get(impact, ())}

    def report(self) -> str:
        found = [v for impact in IMPACTS for v in self.by_impact.get(impact, ())]
        if not found:
            return f"{self.where}: no axe violations"
        return "\n".join([f"{self.where}: {len(found)} axe rule(s) broken", *map(str, found)])


def settle(page: Page) -> None:
    """Wait until the page is drawn as a visitor sees it: no component still "Loading...", and two frames painted,
    so the page script that corrects Gradio's markup (gradio_patches.ACCESSIBLE_MARKUP) has run on the last change."""
    page.locator("p.loading").first.wait_for(state="detached")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def audit(page: Page, where: str, context: str | None = None) -> Audit:
    """Run axe-core on the page once settled (or on the part `context` selects) against TAGS."""
    settle(page)
    options = {"runOnly": {"type": "tag", "values": list(TAGS)}, "resultTypes": ["violations"]}
    response = AXE.run(page, context=context, options=options).response
    by_impact: dict[str, list[Violation]] = {}
    for found in response["violations"]:
        nodes = found["nodes"]
        violation = Violation(rule=found["id"], impact=found["impact"] or "minor", help=found["help"],
                              targets=tuple(" ".join(map(str, node["target"])) for node in nodes),
                              snippets=tuple(node["html"].replace("\n", " ") for node in nodes))
        by_impact.setdefault(violation.impact, []).append(violation)
    return Audit(where, {impact: tuple(found) for impact, found in by_impact.items()})


def assert_accessible(page: Page, where: str, context: str | None = None) -> Audit:
    """Fail, with axe's readable report, when the page has a serious or critical violation; return the audit so a
    test can also check the moderate and minor ones it has decided to live with."""
    result = audit(page, where, context)
    assert not result.blocking, result.report()
    return result
