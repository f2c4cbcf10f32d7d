"""The `fedlab` command: parse, call, print. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlab import __version__
from fedlab.errors import ConfigError, FedlabError

EXIT_FAILED = 1
EXIT_USAGE = 2


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fedlab.report import print_table
    from fedlab.simulate import simulate

    if args.resume and (args.config or args.rounds or args.plain):
        raise ConfigError("--resume goes on with the run's own config: give no federation.toml, "
                          "--rounds or --plain with it")
    run_dir, summary = simulate(args.config, args.out, rounds=args.rounds, plain=args.plain,
                                ray_address=args.ray_address or "",
                                progress=not args.no_progress, resume=args.resume)
    print_table(summary)
    print(run_dir)
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from fedlab.config import default_config, load_config
    from fedlab.task import check_lab_file

    cfg_path = args.config
    if cfg_path is not None and (Path(cfg_path) / "lab.toml").is_file():  # a lab kit folder
        from fedlab.deploy import check_lab_data

        kit, cfg, report = check_lab_data(cfg_path, args.data)
        print(report.format())
        print(f"OK: {args.data} matches the data schema of federation {cfg.name!r} "
              f"(lab {kit.name})")
        return 0
    if cfg_path is not None and Path(cfg_path).is_dir():
        cfg_path = str(Path(cfg_path) / "federation.toml")
    cfg = load_config(cfg_path) if cfg_path else default_config()
    report = check_lab_file(cfg, Path(args.data))
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
    from fedlab.runs import verify_run

    n = verify_run(args.run)
    print(f"OK: {n} audit entries, chain intact, every recorded model hash matches its checkpoint")
    return 0


def _print(msg: str) -> None:
    print(msg, flush=True)


def _cmd_provision(args: argparse.Namespace) -> int:
    from fedlab import deploy, pki

    out = Path(args.out)
    if args.add_lab or args.revoke_lab:
        if args.config:
            raise ConfigError("--add-lab / --revoke-lab change an existing federation folder; "
                              "give only --out DIR, not a federation.toml")
        if args.add_lab:
            res = pki.add_lab(out, args.add_lab)
            print(f"added lab {args.add_lab}: roster version {res.roster_version}")
            print(f"  lab kit:    {res.lab_kits[args.add_lab]}  (send it to the lab privately)")
        else:
            res = pki.revoke_lab(out, args.revoke_lab)
            print(f"revoked lab {args.revoke_lab}: roster version {res.roster_version}")
        print(f"  server kit: {res.server_kit}  (copy roster.json, roster.sig and nodes/ to the "
              "aggregation host, then restart `fedlab server`)")
        print("  every lab:  copy the new roster.json and roster.sig into its kit")
        print(f"CA fingerprint: {res.ca_fingerprint}")
        return 0
    if not args.config:
        raise ConfigError("give the federation.toml to provision (or --add-lab / --revoke-lab "
                          "with --out DIR)")
    res = deploy.provision(args.config, out, force=args.force)
    print(f"federation {res.federation!r} provisioned in {res.out_dir} "
          f"(roster version {res.roster_version})")
    print(f"  CA (keep it here, never share ca/ca.key): {res.out_dir / 'ca'}")
    print(f"  server kit -> the aggregation host: {res.server_kit}")
    for lab, path in res.lab_kits.items():
        print(f"  lab kit -> {lab}: {path}")
    print(f"CA fingerprint (labs compare it out of band): {res.ca_fingerprint}")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from fedlab.deploy import run_server
    from fedlab.report import print_table

    run_dir, summary = run_server(args.kit, out=args.out, listen=args.listen,
                                  state_dir=args.state, rounds=args.rounds,
                                  timeout=args.timeout, status=_print,
                                  new_run=args.new_run)
    print_table(summary)
    print(run_dir)
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    from fedlab.deploy import EXIT_REFUSED, NodeRefused, run_client

    try:
        return run_client(args.kit, args.data, runs=args.runs, log_dir=args.log_dir,
                          status=_print)
    except NodeRefused as exc:
        if args.debug:
            raise
        print(f"fedlab: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedlab.report import print_table

    if not args.deployment:
        from fedlab.simulate import simulate

        run_dir, summary = simulate(None, args.out or "runs", rounds=args.rounds,
                                    plain=args.plain, progress=True)
    else:
        from fedlab.deploy import demo

        run_dir, summary = demo(out=args.out, rounds=args.rounds, plain=args.plain,
                                status=_print)
    print_table(summary)
    print(run_dir)
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
    s.add_argument("--resume", metavar="RUN",
                   help="go on with an interrupted run (its folder) after its last checkpoint")
    s.set_defaults(func=_cmd_simulate)

    c = sub.add_parser("check-data", help="check a data file against the federation's schema",
                       description="Read a lab's data file with the federation's schema and "
                                   "report what would be used, dropped or imputed. Nothing is "
                                   "sent anywhere.")
    c.add_argument("config", nargs="?", metavar="CONFIG_OR_KIT",
                   help="federation.toml or a lab kit folder (default: built-in federation)")
    c.add_argument("--data", required=True, help="the data file to check")
    c.set_defaults(func=_cmd_check_data)

    pv = sub.add_parser("provision", help="create the federation's CA, server kit and lab kits",
                        description="From federation.toml: a federation CA, the server's TLS "
                                    "certificate, and for each lab its identity and SuperNode "
                                    "keys, all in kit folders under --out. Private keys are "
                                    "written mode 600 and never printed.")
    pv.add_argument("config", nargs="?", help="federation.toml (not with --add-lab/--revoke-lab)")
    pv.add_argument("--out", required=True, help="the federation folder (ca/, server/, labs/)")
    pv.add_argument("--force", action="store_true",
                    help="replace a federation already in --out (re-keys everyone)")
    grp = pv.add_mutually_exclusive_group()
    grp.add_argument("--add-lab", metavar="NAME", help="issue a kit for a new lab in --out")
    grp.add_argument("--revoke-lab", metavar="NAME", help="revoke a lab of --out")
    pv.set_defaults(func=_cmd_provision)

    sv = sub.add_parser("server", help="host the federation's server and run the rounds",
                        description="Start the SuperLink (TLS, only the roster's labs admitted), "
                                    "wait for the labs, run the federation's rounds, and write "
                                    "the run folder. Ctrl-C stops everything.")
    sv.add_argument("kit", help="the server kit folder from `fedlab provision`")
    sv.add_argument("--out", help="parent folder of the run folder (default: KIT/runs)")
    sv.add_argument("--listen", metavar="HOST:PORT",
                    help="where to listen (default: the port of server.address on every "
                         "interface, or on loopback for a loopback federation)")
    sv.add_argument("--state", metavar="DIR",
                    help="the SuperLink's persistent state (default: KIT/state)")
    sv.add_argument("--rounds", type=int, help="override federation.rounds")
    sv.add_argument("--timeout", type=float, metavar="SECONDS",
                    help="give up if the run has not finished after this long")
    sv.add_argument("--new-run", action="store_true",
                    help="start a new run even if the last one was interrupted (default: "
                         "resume it after its last checkpoint)")
    sv.set_defaults(func=_cmd_server)

    cl = sub.add_parser("client", help="run this lab's node next to its private data",
                        description="Check the data against the federation's schema, start the "
                                    "lab's training worker and its Flower SuperNode, and take "
                                    "part in the server's runs until stopped (Ctrl-C). Data "
                                    "and keys never leave this machine.")
    cl.add_argument("kit", help="this lab's kit folder from the coordinator")
    cl.add_argument("--data", required=True, help="this lab's data file")
    cl.add_argument("--runs", type=int, default=0, metavar="N",
                    help="stop after taking part in N runs (default: serve until stopped)")
    cl.add_argument("--log-dir", help="keep the worker's and SuperNode's logs here")
    cl.epilog = ("exit status: 0 done, 1 error, 3 refused by the server (key not registered or "
                 "revoked, or the kit is of another federation): restarting will not help")
    cl.set_defaults(func=_cmd_client)

    dm = sub.add_parser("demo", help="run the four-hospital demo on this machine",
                        description="The built-in four-hospital federation: simulated, or with "
                                    "--deployment as real processes (a server and four labs "
                                    "over TLS on loopback, each lab with only its own file).")
    dm.add_argument("--deployment", action="store_true",
                    help="real server and lab processes instead of a simulation")
    dm.add_argument("--rounds", type=int, help="override federation.rounds")
    dm.add_argument("--plain", action="store_true", help="plain instead of secure aggregation")
    dm.add_argument("--out", help="parent folder of the run folder (default: runs)")
    dm.set_defaults(func=_cmd_demo)

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
