"""Precision of the arithmetic step checker on ProcessBench (expert first-error labels).

A flag before the expert's first error, or on a solution the experts found correct, is a
false positive. Counted two ways: the first flagged step of each solution (what
``label --method truth`` uses) and every flagged step. Prints one JSON line.

    python bench/checker_precision.py
"""

from __future__ import annotations

import json
import time

from stepforge.loaders import find_data_file
from stepforge.verify.equations import first_arithmetic_error, step_is_arithmetically_valid


def measure(rows: list[dict]) -> dict:
    first = first_fp = steps = step_fp = 0
    start = time.perf_counter()
    for r in rows:
        fe = first_arithmetic_error(r["steps"])
        if fe is not None:
            first += 1
            first_fp += r["label"] == -1 or fe < r["label"]
        for i, step in enumerate(r["steps"]):
            if step_is_arithmetically_valid(step) is False:
                steps += 1
                step_fp += r["label"] == -1 or i < r["label"]
    return {"solutions": len(rows), "first_flags": first, "first_false_positives": first_fp,
            "first_precision": round(1 - first_fp / first, 3) if first else None,
            "step_flags": steps, "step_false_positives": step_fp,
            "step_precision": round(1 - step_fp / steps, 3) if steps else None,
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    out = {"bench": "checker_precision"}
    for subset in ("gsm8k", "math"):
        out[subset] = measure(json.loads(find_data_file(f"processbench/{subset}.json").read_text()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
