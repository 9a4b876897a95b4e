"""What a person would see as broken on a page, checked in the browser rather than by eye:
anything wider than the screen, a table that must be scrolled sideways to read (its last
columns cut off), and visible elements drawn over one another."""

from __future__ import annotations

from playwright.sync_api import Page

#: A phone (iPhone 12 to 15) and a laptop.
WIDTHS = (390, 1280)

LAYOUT_PROBLEMS = """() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  const wide = document.documentElement.scrollWidth;
  if (wide > width + 1) problems.push(`the page is ${wide}px wide on a ${width}px screen`);
  for (const wrap of document.querySelectorAll('.table-wrap')) {
    if (wrap.offsetParent !== null && wrap.scrollWidth > wrap.clientWidth + 1) {
      problems.push(`a table scrolls sideways: ${wrap.scrollWidth}px in ${wrap.clientWidth}px`);
    }
  }
  // Inside something drawn one pixel wide and cut off (a table's headings, hidden on a phone).
  const clipped = el => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const box = p.getBoundingClientRect();
      if (box.width <= 1 && getComputedStyle(p).overflow !== 'visible') return true;
    }
    return false;
  };
  const scrolls = el => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const x = getComputedStyle(p).overflowX;
      if (x === 'auto' || x === 'scroll') return true;
    }
    return false;
  };
  const classes = el => typeof el.className === 'string' && el.className.trim()
    ? '.' + el.className.trim().split(/\\s+/).join('.') : '';
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + classes(el) +
    ' "' + (el.textContent || el.value || '').trim().slice(0, 30) + '"';
  const shown = [...document.querySelectorAll(
      'a, button, input, select, textarea, h1, h2, h3, label, p, td, th, li, ' +
      '.pill, .widget, .badge')]
    .filter(el => el.offsetParent !== null || getComputedStyle(el).position === 'fixed')
    .filter(el => !el.closest('.visually-hidden, .skip, dialog:not([open]), .toasts'))
    .filter(el => !el.closest('details:not([open])') || el.closest('summary'))
    .filter(el => !clipped(el))
    .map(el => ({el, box: el.getBoundingClientRect()}))
    .filter(({box}) => box.width > 2 && box.height > 2);
  for (const {el, box} of shown) {
    if ((box.right > width + 1 || box.left < -1) && !scrolls(el)) {
      problems.push('beyond the screen: ' + name(el));
    }
  }
  for (let i = 0; i < shown.length; i++) {
    for (let j = i + 1; j < shown.length; j++) {
      const a = shown[i], b = shown[j];
      if (a.el.contains(b.el) || b.el.contains(a.el)) continue;
      const x = Math.min(a.box.right, b.box.right) - Math.max(a.box.left, b.box.left);
      const y = Math.min(a.box.bottom, b.box.bottom) - Math.max(a.box.top, b.box.top);
      if (x > 2 && y > 2) problems.push('overlap: ' + name(a.el) + ' and ' + name(b.el));
    }
  }
  return problems.slice(0, 12);
}"""


def layout_problems(page: Page) -> list[str]:
    """Overflow and overlaps on the page as it is drawn now (empty: none)."""
    found: list[str] = page.evaluate(LAYOUT_PROBLEMS)
    return found
