"""Render a report.html to a PNG with headless Chromium, so a reviewer can look at it.

    python benchmarks/render_report.py OUTPUT_DIR/eval/video2goods/report.html [--out report.png]

Needs a Chromium binary (Debian: ``apt-get install chromium``; not installed in CI). The page is
loaded from a file:// URL in a throw-away profile, with networking, sync and updates off; the report
is self-contained, so nothing needs the network. Prints one JSON object as its last line.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")


def find_chromium():
    """Path of a Chromium/Chrome binary, or None."""
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def run_chromium(html_path, action_flags, chromium=None, timeout=120):
    """Run headless Chromium on ``html_path`` with extra flags; returns the CompletedProcess (stdout text)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium binary found (apt-get install chromium)")
    url = "file://" + os.path.abspath(html_path)
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action_flags, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(html_path, chromium=None, timeout=120):
    """The DOM after the page loaded (and after any script would have run), serialised."""
    result = run_chromium(html_path, ["--dump-dom"], chromium, timeout)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (rc {result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def screenshot(html_path, png_path, width=1280, height=2000, chromium=None, timeout=120):
    """Write a PNG of the first width x height pixels of the page; returns png_path."""
    png_path = os.path.abspath(png_path)
    if os.path.exists(png_path):
        os.remove(png_path)
    result = run_chromium(html_path, [f"--screenshot={png_path}", f"--window-size={width},{height}"],
                          chromium, timeout)
    if not os.path.isfile(png_path):
        raise RuntimeError(f"chromium --screenshot wrote no file (rc {result.returncode}): {result.stderr[-2000:]}")
    return png_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="path of a report.html")
    parser.add_argument("--out", default=None, help="PNG path (default: next to the report, report.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--chromium", default=None, help="Chromium binary (default: /usr/bin/chromium)")
    args = parser.parse_args()
    if not os.path.isfile(args.report):
        sys.exit(f"{args.report}: no such file")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.report)), "report.png")
    png = screenshot(args.report, out, args.width, args.height, args.chromium)
    print(json.dumps({"report": os.path.abspath(args.report), "png": png, "bytes": os.path.getsize(png),
                      "window": [args.width, args.height]}))


if __name__ == "__main__":
    main()
