"""report.html in a real browser: headless Chromium must show hostile titles as text and run no script.

CI does not install Chromium; there the test is skipped. Locally: ``apt-get install -y chromium``.
"""

import os
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from real20m.evaluate.item_lookup import ItemView
from real20m.evaluate.metrics import RetrievalScores
from real20m.evaluate.report import FoundItems, write_report

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import render_report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is not installed (CI does not install it; apt-get install -y chromium to run this test)")

TASK = "video2goods <script>document.title='PWNED'</script>"
TITLES = {
    1: "<script>alert(1)</script>",
    2: 'say "hi" & it\'s <b>bold</b>',
    10: "<img src=x onerror=\"document.title='PWNED'\">",
    11: "<script>document.title='PWNED'</script>",
    12: "Tom & Jerry's \"best\" <iframe src=javascript:alert(1)>",
    13: "</div></div><svg onload=\"document.title='PWNED'\">",
}


class _DomSummary(HTMLParser):
    """Tags, attributes and text of a serialised DOM."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes, self.text, self.title = [], [], [], ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(name for name, _ in attrs)
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


def _write_hostile_report(folder):
    image = os.path.join(folder, "frame.jpg")
    Image.new("RGB", (64, 48), (10, 120, 200)).save(image)

    def lookup(pid):
        return ItemView(pid, "goods", TITLES.get(pid, f"item {pid}"), (image,))

    retrieved = np.array([[10, 11, 12, 13], [12, 10, 13, -1]])
    metrics = RetrievalScores({"recall": {1: 0.5}, "hit": {1: 0.5}, "map": {1: 0.5}}, {"num_queries": 2})
    return write_report(folder, TASK, FoundItems([1, 2], retrieved, {1: [11], 2: [13]}, metrics), lookup)


def test_report_renders_hostile_titles_as_text_in_chromium(tmp_path):
    path = _write_hostile_report(str(tmp_path))
    dom = render_report.dump_dom(path, CHROMIUM)
    summary = _DomSummary()
    summary.feed(dom)
    text = "".join(summary.text)

    assert summary.title == TASK                      # document.title untouched: no script ran
    assert "script" not in summary.tags and "iframe" not in summary.tags and "svg" not in summary.tags
    assert not any(name.startswith("on") for name in summary.attributes)   # no injected handlers
    assert all(src.startswith("data:image/jpeg;base64,") for src in _image_sources(dom))
    for title in TITLES.values():                     # every hostile title shows up verbatim, as text
        assert title in text, title
    assert "b" not in summary.tags                    # '<b>bold</b>' stayed text too
    assert summary.tags.count("img") == 2 + 2 + 7    # one frame per query, its GT panel, 7 results
    assert dom.count('class="item hit"') == 2         # pid 11 for query 1, pid 13 for query 2


def test_control_page_script_does_run(tmp_path):
    """The check above means something: an unescaped marker script does change the title here."""
    path = tmp_path / "control.html"
    path.write_text("<!DOCTYPE html><html><head><title>x</title></head><body>"
                    "<img src=x onerror=\"document.body.dataset.img='ran'\">"
                    "<script>document.title='PWNED'</script></body></html>", encoding="utf-8")
    dom = render_report.dump_dom(str(path), CHROMIUM)
    summary = _DomSummary()
    summary.feed(dom)
    assert summary.title == "PWNED" and "script" in summary.tags


def _image_sources(dom):
    sources = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                sources.append(dict(attrs).get("src", ""))

    Images().feed(dom)
    return sources


def test_render_report_writes_a_screenshot(tmp_path):
    path = _write_hostile_report(str(tmp_path))
    png = render_report.screenshot(path, str(tmp_path / "report.png"), 800, 600, CHROMIUM)
    with Image.open(png) as image:
        assert image.size == (800, 600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10       # something was drawn, not a blank page
