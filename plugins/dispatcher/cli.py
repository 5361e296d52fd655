"""Admin commands for studies: `ttp-gateway studies list` and `ttp-gateway studies create`."""

from __future__ import annotations

import argparse
import sys

from ttp_gateway.plugins.gpas.api import GPAS

from .api import DISPATCHER
from .studies import DEFAULT_ELEMENTS, Study


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    studies = subparsers.add_parser("studies", help="linkage studies in storage")
    actions = studies.add_subparsers(metavar="ACTION")
    actions.add_parser("list", help="list the studies").set_defaults(run=list_studies)
    create = actions.add_parser("create", help="create a study (its domains must exist or are created)")
    create.add_argument("name")
    create.add_argument("--sites", nargs="+", required=True, help="site domains")
    create.add_argument("--projects", nargs="*", default=[], help="project domains")
    create.add_argument("--version", action="append", metavar="NAME:BITS", default=None,
                        help="a Bloom filter version and its length, e.g. 1:1600 (repeatable)")
    create.add_argument("--match-threshold", type=float, default=0.9)
    create.add_argument("--possible-match-threshold", type=float, default=0.75)
    create.add_argument("--task-ttl-hours", type=float, default=14 * 24)
    create.add_argument("--idat-elements", nargs="+", default=list(DEFAULT_ELEMENTS))
    create.set_defaults(run=create_study)


def list_studies(args: argparse.Namespace, gateway) -> int:
    for study in gateway.service(DISPATCHER).studies.all():
        versions = ", ".join(f"{v.name}:{v.length}" for v in study.versions.values())
        print(f"{study.name:<16} sites={','.join(study.sites)} projects={','.join(study.projects) or '-'} "
              f"versions={versions} thresholds={study.possible_match_threshold}/{study.match_threshold}")
    return 0


def create_study(args: argparse.Namespace, gateway) -> int:
    registry = gateway.service(DISPATCHER).studies
    if registry.get(args.name) is not None:
        print(f"error: study {args.name!r} exists already", file=sys.stderr)
        return 1
    versions = []
    for spec in args.version or ["1:1600"]:
        name, _, bits = spec.partition(":")
        versions.append({"name": name, "length": int(bits or 0)})
    study = Study.from_settings(args.name, {
        "sites": args.sites, "projects": args.projects, "versions": versions,
        "match_threshold": args.match_threshold, "possible_match_threshold": args.possible_match_threshold,
        "task_ttl_hours": args.task_ttl_hours, "idat_elements": args.idat_elements})
    pseudonymizer = gateway.service(GPAS)
    for domain in study.domains:
        pseudonymizer.ensure_domain(domain, {"prefix": f"{domain}_"})
    registry.put(study)
    print(f"created study {args.name!r}")
    return 0
