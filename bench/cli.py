"""``python -m bench``: measure gateway and the baseline in one run, print a table, write JSON.

Process layout (2-CPU machine): this process is the load generator and is pinned to the
second CPU; the gateway and the baseline server run as separate processes pinned to the first
CPU (``bench.procs``). Measurements alternate baseline, then gateway, scenario by scenario, so
both see the same machine state. ``--smoke`` runs everything at toy sizes in a few seconds
(``tests/test_bench_smoke.py``); ``--profile DIR`` records py-spy profiles of the gateway.
"""

import argparse
from dataclasses import asdict
from pathlib import Path

import uvloop

from bench import report
from bench.runner import ROOT, Bench
from bench.sizes import SMOKE, Sizes

DEFAULT_OUT = ROOT / "bench" / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, a few seconds")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON path")
    parser.add_argument("--workdir", help="where server data and logs go (default bench/.work)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--gateway-root",
        metavar="DIR",
        help="run the gateway package found in DIR (A/B-test a change without installing it)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the gateway into DIR")
    parser.add_argument(
        "--profile-baseline", action="store_true", help="with --profile: the baseline too"
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip bench.floor (the Sans-I/O reference) in handshake, fan-out and idle",
    )
    parser.add_argument("--no-compression", action="store_true", help="skip the deflate study")
    parser.add_argument(
        "--only",
        help="comma-separated subset: handshake,handshake_tls,fanout,durable_push,catchup,"
        "push_rules,idle,c100k,compression,fanout2,pg_throughput,storm,client (or one half of it: "
        "client_follow, client_commit)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a size, e.g. --set idle_connections=2000",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else Sizes()
    values = asdict(sizes)
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in values:
            raise SystemExit(f"--set: unknown size {key!r}; one of {', '.join(values)}")
        values[key] = (
            type(values[key])(float(text)) if isinstance(values[key], int) else float(text)
        )
    return Sizes(**values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args, sizes_from(args))
    try:
        result = uvloop.run(bench.run())
    finally:
        bench.cleanup()
    out = Path(args.out)
    report.write(result, out)
    print(report.table(result))
    print(f"\nresults written to {out}")
    return 0
