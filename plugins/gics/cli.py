"""Admin commands for the consent catalogue and consents: `ttp-gateway gics ...`.

    gics list [DOMAIN]                          domains, or one domain's policies, modules, templates
    gics create-domain NAME [--signer-id-types Pseudonym ...] [--policy-system URL]
    gics create-policy DOMAIN NAME VERSION [--label T] [--code SYSTEM|CODE ...]
    gics create-module DOMAIN NAME VERSION --policy NAME|VERSION[@P5Y] ...
    gics create-template DOMAIN NAME VERSION --module NAME|VERSION[!] ... [--type CONSENT] [--expires-after P30Y]
    gics import FILE                            the [gics] tables of a TOML file (domains ... templates)
    gics add-consent FILE                       an $addConsent Parameters resource (JSON)
    gics count DOMAIN                           how many consents a domain holds

A new version of a policy, module or template is created next to the old ones; a version
that exists is replaced only with `--replace`. Each change reads the stored catalogue, checks it
and writes in one unit of work; running servers see it within seconds (`service.REFRESH_SECONDS`).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import orjson

from ttp_gateway.core.auth import Client
from ttp_gateway.core.gateway import Call

from .model import (Catalogue, domain_from_settings, module_from_settings, policy_from_settings,
                    template_from_settings)
from .service import GICS, ConsentService, read_catalogue
from .store import CONSENTS

ADMIN = Client(name="admin-cli")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    gics = subparsers.add_parser("gics", help="consent domains, policies, modules, templates, consents")
    actions = gics.add_subparsers(metavar="ACTION")

    listing = actions.add_parser("list", help="list domains, or one domain's catalogue")
    listing.add_argument("domain", nargs="?")
    listing.set_defaults(run=list_catalogue)

    domain = actions.add_parser("create-domain", help="create a consent domain")
    domain.add_argument("name")
    domain.add_argument("--label", default="")
    domain.add_argument("--description", default="")
    domain.add_argument("--signer-id-types", nargs="+", default=["Pseudonym"], metavar="TYPE")
    domain.add_argument("--policy-system", help="code system of the domain's policies")
    domain.add_argument("--replace", action="store_true")
    domain.set_defaults(run=create_domain)

    policy = actions.add_parser("create-policy", help="create a policy version")
    _versioned(policy)
    policy.add_argument("--description", default="")
    policy.add_argument("--system", help="code system (default: the domain's)")
    policy.add_argument("--code", action="append", default=[], metavar="SYSTEM|CODE",
                        help="a further code of the policy, e.g. the MII OID code")
    policy.set_defaults(run=create_policy)

    module = actions.add_parser("create-module", help="create a module version")
    _versioned(module)
    module.add_argument("--text", default="")
    module.add_argument("--policy", action="append", required=True, metavar="NAME|VERSION[@DURATION]",
                        help="a policy the module grants, optionally expiring after a duration")
    module.set_defaults(run=create_module)

    template = actions.add_parser("create-template", help="create a template version")
    _versioned(template)
    template.add_argument("--type", default="CONSENT")
    template.add_argument("--title", default="")
    template.add_argument("--description", default="")
    template.add_argument("--expires-after", metavar="DURATION")
    template.add_argument("--module", action="append", required=True, metavar="NAME|VERSION[!]",
                          help="a module of the form; '!' marks it mandatory")
    template.set_defaults(run=create_template)

    load = actions.add_parser("import", help="store the [gics] catalogue of a TOML file")
    load.add_argument("file", type=Path)
    load.set_defaults(run=import_catalogue)

    consent = actions.add_parser("add-consent", help="record a consent from an $addConsent Parameters file")
    consent.add_argument("file", type=Path)
    consent.set_defaults(run=add_consent)

    count = actions.add_parser("count", help="how many consents a domain holds")
    count.add_argument("domain")
    count.set_defaults(run=count_consents)


def _versioned(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain")
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--label", default="")
    parser.add_argument("--replace", action="store_true", help="replace the version if it exists")


def _service(gateway) -> ConsentService:
    return gateway.service(GICS)


def _stored(gateway) -> Catalogue:
    with gateway.repository.read() as unit:
        return read_catalogue(unit[CONSENTS])


def list_catalogue(args: argparse.Namespace, gateway) -> int:
    catalogue = _stored(gateway)
    if args.domain is None:
        for domain in catalogue.domains.values():
            print(f"{domain.name:<24} signer ids: {', '.join(domain.signer_id_types)}  "
                  f"policies: {len(catalogue.policies_of(domain.name))}  "
                  f"templates: {len(catalogue.templates_of(domain.name))}")
        return 0
    if catalogue.domain(args.domain) is None:
        raise ValueError(f"unknown consent domain {args.domain!r}")
    for policy in catalogue.policies_of(args.domain):
        codes = " ".join(f"{c.system}|{c.code}" for c in policy.codes)
        print(f"policy    {policy.key}  {policy.system}  {codes}".rstrip())
    for module in catalogue.modules_of(args.domain):
        print(f"module    {module.key}  grants {', '.join(str(p.policy) for p in module.policies)}")
    for template in catalogue.templates_of(args.domain):
        modules = ", ".join(str(m.module) + ("!" if m.mandatory else "") for m in template.modules)
        print(f"template  {template.key}  {template.type.value}  modules {modules}")
    return 0


_SINGULAR = {"policies": "policy", "modules": "module", "templates": "template"}


def _store_version(gateway, domain_name: str, kind: str, build: Any, replace: bool) -> int:
    """Build the new version against the stored catalogue, check it and store it, in one unit."""
    service = _service(gateway)

    def change(unit) -> Any:
        catalogue = read_catalogue(unit[CONSENTS])
        domain = catalogue.domain(domain_name)
        if domain is None:
            raise ValueError(f"unknown consent domain {domain_name!r}")
        item = build(domain)
        target = getattr(catalogue, kind)
        if (item.domain, item.key) in target and not replace:
            raise ValueError(f"{_SINGULAR[kind]} {item.key} exists already in domain {item.domain!r}; "
                             "a change is a new version (or use --replace)")
        target[(item.domain, item.key)] = item
        problems = catalogue.problems()
        if problems:
            raise ValueError(problems[0])
        unit[CONSENTS].put_versions([item])
        unit.after_commit(service.forget)
        return item

    item = gateway.repository.write(change)
    print(f"stored {item.key} in domain {item.domain!r}")
    return 0


def create_domain(args: argparse.Namespace, gateway) -> int:
    settings = {"name": args.name, "label": args.label or args.name, "description": args.description,
                "signer_id_types": args.signer_id_types}
    if args.policy_system:
        settings["policy_system"] = args.policy_system
    domain = domain_from_settings(settings)
    service = _service(gateway)

    def change(unit) -> None:
        if read_catalogue(unit[CONSENTS]).domain(args.name) is not None and not args.replace:
            raise ValueError(f"consent domain {args.name!r} exists already")
        unit[CONSENTS].put_domains([domain])
        unit.after_commit(service.forget)

    gateway.repository.write(change)
    print(f"stored consent domain {args.name!r}")
    return 0


def create_policy(args: argparse.Namespace, gateway) -> int:
    settings: dict[str, Any] = {"name": args.name, "version": args.version, "label": args.label,
                                "description": args.description, "codes": args.code}
    if args.system:
        settings["system"] = args.system
    return _store_version(gateway, args.domain, "policies", lambda d: policy_from_settings(settings, d), args.replace)


def create_module(args: argparse.Namespace, gateway) -> int:
    policies: list[Any] = []
    for text in args.policy:
        reference, _, duration = text.partition("@")
        policies.append({"policy": reference, "expires_after": duration} if duration else reference)
    settings = {"name": args.name, "version": args.version, "label": args.label, "text": args.text,
                "policies": policies}
    return _store_version(gateway, args.domain, "modules", lambda d: module_from_settings(settings, d), args.replace)


def create_template(args: argparse.Namespace, gateway) -> int:
    modules = [{"module": text.rstrip("!"), "mandatory": text.endswith("!")} for text in args.module]
    settings: dict[str, Any] = {"name": args.name, "version": args.version, "type": args.type,
                                "label": args.label, "title": args.title, "description": args.description,
                                "modules": modules}
    if args.expires_after:
        settings["expires_after"] = args.expires_after
    return _store_version(gateway, args.domain, "templates", lambda d: template_from_settings(settings, d),
                          args.replace)


def import_catalogue(args: argparse.Namespace, gateway) -> int:
    try:
        section = tomllib.loads(args.file.read_text(encoding="utf-8")).get("gics", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"{args.file}: {error}") from None
    service = _service(gateway)

    def change(unit) -> Catalogue:
        imported = Catalogue.from_settings(section, known=read_catalogue(unit[CONSENTS]))
        service.store_catalogue(unit, imported)
        return imported

    imported = gateway.repository.write(change)
    print(f"stored {len(imported.domains)} domains, {len(imported.policies)} policies, "
          f"{len(imported.modules)} modules, {len(imported.templates)} templates")
    return 0


def add_consent(args: argparse.Namespace, gateway) -> int:
    """Run `$addConsent` as a request would: bound and checked by its declaration, written in
    one unit, audited as done by the admin command line."""
    from ttp_gateway.core.execution import Executor
    from ttp_gateway.core.operations import bind

    from .operations import GicsOperations

    try:
        resource = orjson.loads(args.file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as error:
        raise ValueError(f"{args.file}: {error}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise ValueError("the file must hold an $addConsent Parameters resource")
    operation = next(op for op in GicsOperations().declarations() if op.name == "addConsent")
    call = Call(gateway, operation, bind(operation.parameters, resource.get("parameter", [])), ADMIN)
    answer = Executor(gateway.repository, gateway.limits.max_answer_bytes).run(operation, call, "json")
    bundle = orjson.loads(answer.content)
    if answer.status >= 400:
        raise ValueError("; ".join(issue.get("diagnostics", "") for issue in bundle.get("issue", [])))
    consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    print(f"recorded consent {consent['id']}")
    return 0


def count_consents(args: argparse.Namespace, gateway) -> int:
    with gateway.repository.read() as unit:
        if read_catalogue(unit[CONSENTS]).domain(args.domain) is None:
            raise ValueError(f"unknown consent domain {args.domain!r}")
        print(unit[CONSENTS].count_consents(args.domain))
    return 0
