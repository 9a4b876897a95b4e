"""The embedded default under load: ``tokenbank serve --workers 4`` on one SQLite file, with
64 ``wrk`` connections spending at once, against one worker with the same load.

    make bench-scale                # with the other scale benchmarks
    python -m bench.sqlite_load [--seconds 8] [--rounds 3]

SQLite takes one writer at a time for the whole file. Inside a process writers queue on a
lock; between processes they wait in SQLite's busy handler, up to
30 s (``db.SQLITE_BUSY_TIMEOUT_MS``), and one that still finds the file
locked is answered 503 with ``Retry-After``. What must never happen is SQLite's "database is
locked" reaching a client as a 500, or as any body at all: the run fails if a single answer
is neither a 201 nor a 503 with ``Retry-After``, and prints each status's count,
the throughput and p99 of both variants, and their ratio (4 workers over 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.http import prepare
from bench.spends import CONNECTIONS, Result, Target, compare, tokenbank, wrk_program

WALLETS = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per slice")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk_program()
    with tempfile.TemporaryDirectory(prefix="tokenbank-sqlite-load-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'tokenbank.db'}"
        secret = prepare(url, wallets=WALLETS)
        env = {
            "TOKENBANK_DATABASE_URL": url,
            "TOKENBANK_SECRET_KEY": "bench-" + "k" * 40,
        }
        auth = f"Bearer {secret}"
        path = "/api/v1/users/%s/spend"
        print(
            f"SQLite (a file in {scratch}); wrk -t1 -c{CONNECTIONS}; {args.rounds} rounds of"
            f" {args.seconds:g} s per variant, interleaved; {WALLETS:,} wallets"
        )
        with tokenbank(env) as (one, one_pid), tokenbank(env, "--workers", "4") as (four, four_pid):
            totals = compare(
                "spend on SQLite: one worker against four",
                {
                    "serve (1 worker)": ([Target(one, path, auth, WALLETS)], [one_pid]),
                    "serve --workers 4": ([Target(four, path, auth, WALLETS)], [four_pid]),
                },
                seconds=args.seconds,
                rounds=args.rounds,
            )
    for name, total in totals.items():
        print(f"{name}: answers by status {dict(sorted(total.statuses.items()))}")
    four_workers, one_worker = totals["serve --workers 4"], totals["serve (1 worker)"]
    print(f"4 workers / 1 worker: throughput {four_workers.rate / one_worker.rate:.2f}x")
    if failures := [name for name, total in totals.items() if _unclean(total)]:
        sys.exit(f"answers other than 201 or a clean 503 in: {', '.join(failures)}")


def _unclean(total: Result) -> int:
    """Answers that are neither a spend (201) nor "try again" (a 503 with Retry-After)."""
    others = sum(n for status, n in total.statuses.items() if status not in (201, 503))
    return others + total.unclean + total.socket_errors


if __name__ == "__main__":
    main()
