#!/usr/bin/env python3
"""Write docs/settings.md from the settings' own metadata (riskserve.config).

tests/test_settings.py fails when the committed file differs from what this
writes, so run it after changing a setting.

Usage: python scripts/gen_settings_doc.py [--check]
  --check   write nothing; exit 1 if docs/settings.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from riskserve.config import markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def main(argv: list[str]) -> int:
    text = markdown()
    if argv == ["--check"]:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python scripts/gen_settings_doc.py", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
