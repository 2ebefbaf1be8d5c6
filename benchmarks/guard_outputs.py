"""What ``aipc repro``'s output check costs (pipeline/core/cache_links.py ``guard_outputs``, issue 35.3).

Before and after ``dvc repro`` every output ``dvc.lock`` records is checked against its manifest. Measured here
on a built project, three ways: cold (an empty digest cache: every byte of every artifact is read, as on a
first run, or on Windows, where the digest cache is off), warm (a new process with the digest cache of an
earlier run: one ``stat`` per file) and again in the same process (the check after DVC: files found good
before are skipped by identity). Read-only on a project whose outputs match their manifests (a mismatching
file would be dropped, as ``aipc repro`` does), so run it on a copy.

    python benchmarks/guard_outputs.py /path/to/built/project [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "guard_outputs.json"
ONE_CHECK = """
import json, sys, time
from pipeline.core import cache_links
started = time.perf_counter()
dropped = cache_links.guard_outputs()
first = time.perf_counter() - started
started = time.perf_counter()
cache_links.guard_outputs()
again = time.perf_counter() - started
files = cache_links._manifest_files(cache_links.Path("."))
print(json.dumps({"s": first, "again_s": again, "dropped": len(dropped), "files": len(files),
                  "bytes": sum(p.stat().st_size for p in files)}))
"""


def one_check(project: Path, digest_cache: Path) -> dict:
    """One ``guard_outputs`` in a fresh process (and once more in it), with ``digest_cache`` as the digest cache."""
    env = {**os.environ, "AIPC_DIGEST_CACHE": str(digest_cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", ONE_CHECK], cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"cold": [], "warm": []}
        for i in range(args.repeat):
            cache = Path(tmp) / f"digests-{i}.json"
            rows["cold"].append(one_check(args.project, cache))
            time.sleep(0.1)
            rows["warm"].append(one_check(args.project, cache))
    first = rows["cold"][0]
    result = {
        "project": str(args.project),
        "outputs_files": first["files"],
        "outputs_bytes": first["bytes"],
        "cold_s": sorted(r["s"] for r in rows["cold"])[args.repeat // 2],
        "warm_s": sorted(r["s"] for r in rows["warm"])[args.repeat // 2],
        "same_process_again_s": sorted(r["again_s"] for r in rows["warm"])[args.repeat // 2],
        "dropped": sum(r["dropped"] for rs in rows.values() for r in rs),
        "repeat": args.repeat,
    }
    print(json.dumps(result, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
