"""Keyboard-only driving for browser tests: Tab to a control, checking that every stop on the way shows its focus."""

from __future__ import annotations

from playwright.sync_api import Locator, Page

# What has focus now, and whether a sighted keyboard user can see it: drawn, and marked by an outline at least 2 px
# wide (Chromium's own ring is 1 px "auto" and Gradio hides it on several controls; theme.CSS draws 3 px everywhere).
FOCUS = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  const style = getComputedStyle(e);
  const name = (e.getAttribute('aria-label') || e.innerText || e.placeholder || e.tagName).trim().slice(0, 60);
  const drawn = e.getClientRects().length > 0 && style.visibility !== 'hidden';
  const ringed = e.matches(':focus-visible') && style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
  return {name: `${e.tagName.toLowerCase()} "${name}"`, visible: drawn && ringed};
}"""


def tab_to(page: Page, target: Locator, *, backwards: bool = False, limit: int = 60) -> list[str]:
    """Press Tab (Shift+Tab when `backwards`) until `target` has the focus; return the stops passed on the way.

    Fails when `target` is not reached within `limit` presses, or when a stop's focus cannot be seen."""
    stops: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
        focus = page.evaluate(FOCUS)
        if focus is None:  # past either end of the page, in the browser's own controls
            continue
        assert focus["visible"], (f"{focus['name']} shows no clear keyboard focus (drawn, with an outline of 2 px "
                                  f"or more); stops before it: {stops}")
        stops.append(focus["name"])
        if target.evaluate("element => element === document.activeElement"):
            return stops
    raise AssertionError(f"{target} not reached with the keyboard in {limit} presses; stops: {stops}")
