"""The `fedlab` command: parse, call, print. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlab import __version__
from fedlab.errors import FedlabError

EXIT_FAILED = 1
EXIT_USAGE = 2


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fedlab.report import print_table
    from fedlab.simulate import simulate

    run_dir, summary = simulate(args.config, args.out, rounds=args.rounds, plain=args.plain,
                                ray_address=args.ray_address or "",
                                progress=not args.no_progress)
    print_table(summary)
    print(run_dir)
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from fedlab.config import default_config, load_config
    from fedlab.data.check import check_file
    from fedlab.task import schema_for

    cfg_path = args.config
    if cfg_path is not None and Path(cfg_path).is_dir():
        cfg_path = str(Path(cfg_path) / "federation.toml")
    cfg = load_config(cfg_path) if cfg_path else default_config()
    report = check_file(Path(args.data), schema_for(cfg))
    print(report.format())
    print(f"OK: {args.data} matches the data schema of federation {cfg.name!r}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fedlab.report import load_run, print_table, write_report

    path = write_report(args.run)
    summary, _ = load_run(args.run)
    print_table(summary)
    print(path)
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from fedlab.runs import verify_audit

    n = verify_audit(Path(args.run) / "audit.jsonl")
    print(f"OK: {n} audit entries, chain intact")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedlab",
        description="Federated learning for institutions that cannot share data: each lab "
                    "trains next to its private data and sends only encrypted updates.",
    )
    p.add_argument("--version", action="version", version=f"fedlab {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate a whole federation on this machine",
                       description="Run a federation on Flower's simulation runtime (Ray). "
                                   "Without a file: the four heart-disease hospitals.")
    s.add_argument("config", nargs="?", help="federation.toml (default: built-in federation)")
    s.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    s.add_argument("--rounds", type=int, help="override federation.rounds")
    s.add_argument("--plain", action="store_true",
                   help="plain aggregation (updates still signed) instead of secure aggregation")
    s.add_argument("--ray-address", help="run on an existing Ray cluster (e.g. 10.0.0.5:6379)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_simulate)

    c = sub.add_parser("check-data", help="check a data file against the federation's schema",
                       description="Read a lab's data file with the federation's schema and "
                                   "report what would be used, dropped or imputed. Nothing is "
                                   "sent anywhere.")
    c.add_argument("config", nargs="?",
                   help="federation.toml or a lab kit folder (default: built-in federation)")
    c.add_argument("--data", required=True, help="the data file to check")
    c.set_defaults(func=_cmd_check_data)

    r = sub.add_parser("report", help="(re)write report.md and plots of a run and print results")
    r.add_argument("run", help="a run folder")
    r.set_defaults(func=_cmd_report)

    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    av = asub.add_parser("verify", help="check the hash chain of a run's audit.jsonl")
    av.add_argument("run", help="a run folder")
    av.set_defaults(func=_cmd_audit_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except FedlabError as exc:
        if args.debug:
            raise
        print(f"fedlab: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fedlab: interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
