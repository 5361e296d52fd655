"""Admin commands for domains: `ttp-gateway domains list` and `ttp-gateway domains create`."""

from __future__ import annotations

import argparse
import sys

from .api import GPAS
from .domains import DEFAULTS, Domain


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    domains = subparsers.add_parser("domains", help="pseudonymisation domains in storage")
    actions = domains.add_subparsers(metavar="ACTION")
    actions.add_parser("list", help="list the domains and their rules").set_defaults(run=list_domains)
    create = actions.add_parser("create", help="create a domain")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--alphabet", default=DEFAULTS["alphabet"],
                        help="Numbers, NumbersWithoutZero, NumbersX, Hex, Symbol31, Symbol32 or characters")
    create.add_argument("--generator", default=DEFAULTS["generator"],
                        help="check digits: NoCheckDigits, LuhnModN, Damm, Verhoeff, ...")
    create.add_argument("--length", type=int, default=DEFAULTS["length"])
    create.add_argument("--prefix", default="")
    create.add_argument("--suffix", default="")
    create.add_argument("--include-prefix", action="store_true", help="prefix counts into check digits")
    create.add_argument("--include-suffix", action="store_true", help="suffix counts into check digits")
    create.add_argument("--delimiter", default="")
    create.add_argument("--delimiter-every", type=int, default=0)
    create.add_argument("--multi-psn", action="store_true", help="several pseudonyms per original")
    create.add_argument("--deletable", action="store_true", help="entries may be deleted")
    create.set_defaults(run=create_domain)


def list_domains(args: argparse.Namespace, gateway) -> int:
    stored = {domain.name: domain for domain in gateway.service(GPAS).domains.all()}
    # Configured domains reach the store when the service starts; until then they are shown marked.
    configured = {settings["name"]: Domain.from_settings(settings["name"], settings)
                  for settings in gateway.config.section("gpas").get("domains", [])}
    for name in sorted(stored.keys() | configured.keys()):
        domain = stored.get(name) or configured[name]
        f = domain.format
        flags = [flag for flag, on in (("multi-psn", domain.multi_psn), ("deletable", domain.deletable)) if on]
        if name not in stored:
            flags.append("(configured; stored when the service starts)")
        print(f"{domain.name:<24} {f.alphabet} x{f.length} {f.check_digits} "
              f"prefix={f.prefix!r} suffix={f.suffix!r} {' '.join(flags)}".rstrip())
    return 0


def create_domain(args: argparse.Namespace, gateway) -> int:
    registry = gateway.service(GPAS).domains
    if registry.get(args.name) is not None:
        print(f"error: domain {args.name!r} exists already", file=sys.stderr)
        return 1
    settings = {key: getattr(args, key) for key in DEFAULTS}
    domain = Domain.from_settings(args.name, settings, args.description)
    registry.put(domain)
    print(f"created domain {args.name!r}")
    return 0
