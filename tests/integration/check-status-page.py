#!/usr/bin/env python3
"""check-status-page.py: what test-status-page.sh reads from spored's
status page as a browser rendered it.

  check-status-page.py rows DOM.html
      prints the page's table rows as JSON: a list of objects with the
      row's class, its data-* attributes (without "data-") and its text
      (cells joined by " | ")
  check-status-page.py png FILE WIDTH HEIGHT
      exit 0 when FILE is a PNG of WIDTH x HEIGHT pixels that is not blank
      (its pixels vary: more than a few colours, a standard deviation of
      the grey levels above 1); else prints why and exits 1.  Needs PIL
      (Debian package python3-pil).
"""
import json
import sys
from html.parser import HTMLParser


class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows = []
        self.row = None
        self.cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.row = {"class": a.get("class", ""), "cells": []}
            for k, v in a.items():
                if k.startswith("data-"):
                    self.row[k[5:]] = v
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row["cells"].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.row["text"] = " | ".join(self.row.pop("cells"))
            self.rows.append(self.row)
            self.row = None

    def handle_startendtag(self, tag, attrs):
        if tag == "br" and self.cell is not None:
            self.cell.append("\n")

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def rows(path):
    p = Rows()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    json.dump(p.rows, sys.stdout, indent=1)
    print()
    return 0


def png(path, width, height):
    from PIL import Image, ImageStat

    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # noqa: BLE001 - report any decoding failure
        print(f"{path}: not a PNG: {e}")
        return 1
    if im.format != "PNG":
        print(f"{path}: {im.format}, not PNG")
        return 1
    if im.size != (width, height):
        print(f"{path}: {im.size[0]}x{im.size[1]}, not {width}x{height}")
        return 1
    colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    n = len(colours) if colours else 1 << 20
    sd = ImageStat.Stat(im.convert("L")).stddev[0]
    print(f"{path}: {width}x{height}, {n} colours, grey stddev {sd:.1f}")
    if n <= 8 or sd <= 1.0:
        print(f"{path}: blank (too uniform)")
        return 1
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "rows":
        return rows(argv[2])
    if len(argv) == 5 and argv[1] == "png":
        return png(argv[2], int(argv[3]), int(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
