"""Run as a separate OS process by the concurrency tests:

    python -m tests.ledger.spend_worker URL USER_ID COUNT KEY_PREFIX

Waits until the start time given on stdin, spends 1 token COUNT times from 8 threads, and
prints a JSON tally of the outcomes.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tokenbank import ledger
from tokenbank.db import connect


def main() -> None:
    url, user_id, count, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    db = connect(url, pool_size=8)
    start_at = float(sys.stdin.readline())

    def one(n: int) -> str:
        try:
            with db.transaction() as conn:
                ledger.spend(conn, user_id=user_id, amount=1, idempotency_key=f"{prefix}-{n}")
        except ledger.InsufficientTokens:
            return "insufficient"
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return "ok"

    time.sleep(max(0.0, start_at - time.time()))
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(count)))
    db.dispose()
    tally: dict[str, int] = {}
    for outcome in outcomes:
        tally[outcome] = tally.get(outcome, 0) + 1
    print(json.dumps(tally))


if __name__ == "__main__":
    main()
