"""GetEvents client run as a separate process by the API tests.

    stream_client.py ADDRESS [--allow JSON] [--deny JSON] [--fields JSON]
                     [--until-pid N] [--sleep S] [--quiet]

Prints every event as one JSON line, stops at the event whose process pid is
--until-pid (not printed), then prints {"summary": {"count": n}}. --sleep makes it a
deliberately slow reader.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("--allow", default="[]")
    ap.add_argument("--deny", default="[]")
    ap.add_argument("--fields", default="[]")
    ap.add_argument("--until-pid", type=int, default=999_999)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--quiet", action="store_true", help="count events, print only the summary")
    a = ap.parse_args()

    from vigil.api.client import stream_events

    n = 0
    for ev in stream_events(a.address, json.loads(a.allow), json.loads(a.deny), json.loads(a.fields), 10.0):
        if ev.get("process_exec", {}).get("process", {}).get("pid") == a.until_pid:
            break
        n += 1
        if not a.quiet:
            sys.stdout.write(json.dumps(ev) + "\n")
        if a.sleep:
            time.sleep(a.sleep)
    sys.stdout.write(json.dumps({"summary": {"count": n}}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
