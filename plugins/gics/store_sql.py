"""The gICS store on SQL (SQLite, PostgreSQL): tables, and statements built from them once.

A consent is one row of `gics_consent` (its signer ids, module and policy statuses as JSON text,
enough to compute states) beside three tables that serve queries: `gics_signer_id` finds a
person's consents, `gics_signed_policy` the signed policies a Consent search asks for, and
`gics_consent_resources` holds what the consent came with, read only where an answer shows it.

Moments are milliseconds since the epoch. A page is found by its first `seq`, taken at the page's
offset from the (domain, seq) index alone, and then read by a range of seq: the cost of a page
does not depend on how many consents precede it beyond stepping over index entries, and nothing
outside the page is read. Batches are one statement each; inserts skip what conflicts with a
unique key (`ON CONFLICT DO NOTHING RETURNING`) and read back what was stored before.

Searches combine criteria freely; each combination (which criteria, how many date comparisons)
is compiled once, the first time it is asked for, and kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import orjson
from sqlalchemy import (BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text, and_,
                        bindparam, exists, func, not_, or_, select, tuple_, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from ttp_gateway.backends.sql import SqlBuilder, SqlSession, prepared

from .model import (ConsentDomain, Key, Module, Policy, SignedConsent, SignedPolicy, SignerId, Template,
                    catalogue_settings, to_millis)
from .store import (PERMITTING, ConsentStore, PolicyFilter, consent_of, module_rows, policy_end, policy_rows,
                    signer_rows)

metadata = MetaData()
SEQ = BigInteger().with_variant(Integer, "sqlite")  # SQLite numbers only INTEGER keys itself

domain_table = Table(
    "gics_domain", metadata,
    Column("name", String(255), primary_key=True),
    Column("settings", Text, nullable=False),
)


def _versioned(name: str) -> Table:
    return Table(
        name, metadata,
        Column("domain", String(255), ForeignKey("gics_domain.name"), primary_key=True),
        Column("name", String(255), primary_key=True),
        Column("version", String(255), primary_key=True),
        Column("settings", Text, nullable=False),
    )


policy_table = _versioned("gics_policy")
module_table = _versioned("gics_module")
template_table = _versioned("gics_template")
VERSIONED = {Policy: policy_table, Module: module_table, Template: template_table}

consent = Table(
    "gics_consent", metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("domain", String(255), ForeignKey("gics_domain.name"), nullable=False),
    Column("template_name", String(255), nullable=False),
    Column("template_version", String(255), nullable=False),
    Column("template_type", String(32), nullable=False),
    Column("signed_at", BigInteger, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    Column("signer_ids", Text, nullable=False),
    Column("modules", Text, nullable=False),
    Column("policies", Text, nullable=False),
)
Index("ix_gics_consent_domain", consent.c.domain, consent.c.seq)
Index("ix_gics_consent_template", consent.c.domain, consent.c.template_name, consent.c.template_version,
      consent.c.seq)

consent_resources = Table(
    "gics_consent_resources", metadata,
    Column("seq", BigInteger, ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
    Column("resources", Text, nullable=False),
)

signer_id = Table(
    "gics_signer_id", metadata,
    Column("domain", String(255), primary_key=True),
    Column("id_type", String(255), primary_key=True),
    Column("id_value", Text, primary_key=True),
    Column("seq", BigInteger, ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# Clustered by (domain, seq, position): a domain's signed policies are read in the order pages
# list them, without sorting; `position` is the policy's place in its consent's list.
signed_policy = Table(
    "gics_signed_policy", metadata,
    Column("domain", String(255), primary_key=True),
    Column("seq", BigInteger, ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("policy_name", String(255), nullable=False),
    Column("policy_version", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("starts_at", BigInteger, nullable=False),
    Column("ends_at", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_gics_signed_policy_name", signed_policy.c.domain, signed_policy.c.policy_name, signed_policy.c.seq)

c, r, s, sp = consent.c, consent_resources.c, signer_id.c, signed_policy.c
CONSENT_COLUMNS = (c.seq, c.id, c.domain, c.template_name, c.template_version, c.template_type, c.signed_at,
                   c.recorded_at, c.signer_ids, c.modules, c.policies)
WIDTH = len(CONSENT_COLUMNS)


@dataclass(frozen=True)
class _Shape:
    """Which criteria a search statement has: the key its compiled statement is kept under."""

    kind: str  # "policies", "count-policies", "consents", "count-consents"
    signers: bool
    template: bool
    names: bool
    permit: bool | None
    periods: tuple[str, ...]
    resources: bool = False


class _Statements:
    def __init__(self, build: SqlBuilder) -> None:
        self._build = build
        self._searches: dict[_Shape, Any] = {}
        self._lock = threading.Lock()
        insert = sqlite.insert if build.name == "sqlite" else postgresql.insert
        self._insert = insert
        of_domain = c.domain == bindparam("domain")
        of_template = and_(c.template_name == bindparam("template_name"),
                           c.template_version == bindparam("template_version"))
        with_resources = consent.outerjoin(consent_resources, r.seq == c.seq)

        # --- the catalogue -------------------------------------------------------------------
        self.domains = build.compile(select(domain_table.c.settings).order_by(domain_table.c.name))
        self.versions = {table.name: build.compile(select(table.c.settings).order_by(
            table.c.domain, table.c.name, table.c.version)) for table in VERSIONED.values()}
        rows = build.rows("domains", domain_name=String(), settings=Text())
        self.insert_domains = build.compile(
            insert(domain_table).from_select(["name", "settings"], select(rows.c.domain_name, rows.c.settings).order_by(rows.c.i))
            .on_conflict_do_nothing().returning(domain_table.c.name))
        self.update_domain = build.compile(update(domain_table).where(domain_table.c.name == bindparam("key_name"))
                                           .values(settings=bindparam("settings")))
        self.insert_versions, self.update_version = {}, {}
        for table in VERSIONED.values():
            rows = build.rows("versions", domain=String(), object_name=String(), version=String(), settings=Text())
            self.insert_versions[table.name] = build.compile(
                insert(table).from_select(["domain", "name", "version", "settings"],
                                          select(rows.c.domain, rows.c.object_name, rows.c.version, rows.c.settings)
                                          .order_by(rows.c.i))
                .on_conflict_do_nothing().returning(table.c.domain, table.c.name, table.c.version))
            self.update_version[table.name] = build.compile(
                update(table).where(table.c.domain == bindparam("key_domain"), table.c.name == bindparam("key_name"),
                                    table.c.version == bindparam("key_version"))
                .values(settings=bindparam("settings")))

        # --- recording consents ----------------------------------------------------------------
        rows = build.rows("consents", id=String(), fingerprint=String(), domain=String(), template_name=String(),
                          template_version=String(), template_type=String(), signed_at=BigInteger(),
                          recorded_at=BigInteger(), signer_ids=Text(), modules=Text(), policies=Text())
        columns = ["id", "fingerprint", "domain", "template_name", "template_version", "template_type", "signed_at",
                   "recorded_at", "signer_ids", "modules", "policies"]
        self.insert_consents = build.compile(
            insert(consent).from_select(columns, select(*(rows.c[n] for n in columns)).order_by(rows.c.i))
            .on_conflict_do_nothing().returning(c.seq, c.fingerprint))
        self.by_fingerprints = build.compile(
            select(*CONSENT_COLUMNS, c.fingerprint).where(build.in_batch(c.fingerprint, "fingerprints")))
        rows = build.rows("new_signers", domain=String(), id_type=String(), id_value=Text(), seq=BigInteger())
        self.insert_signers = build.compile(
            insert(signer_id).from_select(["domain", "id_type", "id_value", "seq"],
                                          select(rows.c.domain, rows.c.id_type, rows.c.id_value, rows.c.seq)
                                          .order_by(rows.c.i)))
        rows = build.rows("new_policies", domain=String(), seq=BigInteger(), position=Integer(),
                          policy_name=String(), policy_version=String(), status=String(), starts_at=BigInteger(),
                          ends_at=BigInteger())
        columns = ["domain", "seq", "position", "policy_name", "policy_version", "status", "starts_at", "ends_at"]
        self.insert_policies = build.compile(
            insert(signed_policy).from_select(columns, select(*(rows.c[n] for n in columns)).order_by(rows.c.i)))
        rows = build.rows("new_resources", seq=BigInteger(), resources=Text())
        self.insert_resources = build.compile(
            insert(consent_resources).from_select(["seq", "resources"],
                                                  select(rows.c.seq, rows.c.resources).order_by(rows.c.i)))

        # --- reading consents -------------------------------------------------------------------
        self.persons, self.person = {}, {}
        signers = build.rows("signers", id_type=String(), id_value=Text())
        of_persons = c.seq.in_(_of_signers(signers))
        of_person = c.seq.in_(select(s.seq).where(s.domain == bindparam("domain"), s.id_type == bindparam("id_type"),
                                                  s.id_value == bindparam("id_value")))
        self.pages, self.counts = {}, {}
        for resources in (False, True):
            columns_ = (*CONSENT_COLUMNS, r.resources) if resources else CONSENT_COLUMNS
            source = with_resources if resources else consent
            self.persons[resources] = build.compile(
                select(*columns_).select_from(source).where(of_persons).order_by(c.seq))
            self.person[resources] = build.compile(
                select(*columns_).select_from(source).where(of_person).order_by(c.seq))
            for by_template in (False, True):
                wanted = and_(of_domain, of_template) if by_template else of_domain
                first = select(c.seq).where(wanted).order_by(c.seq).limit(1).offset(bindparam("offset"))
                self.pages[(resources, by_template)] = build.compile(
                    select(*columns_).select_from(source).where(wanted, c.seq >= first.scalar_subquery())
                    .order_by(c.seq).limit(bindparam("limit")))
        for by_template in (False, True):
            wanted = and_(of_domain, of_template) if by_template else of_domain
            self.counts[by_template] = build.compile(select(func.count()).select_from(consent).where(wanted))
        values = (select(s.id_value).where(s.domain == bindparam("domain"), s.id_type == bindparam("id_type"),
                                           s.id_value > bindparam("after"))
                  .distinct().order_by(s.id_value).limit(bindparam("limit")))
        self.signers_page = build.compile(
            select(s.id_value, *CONSENT_COLUMNS).select_from(signer_id.join(consent, c.seq == s.seq))
            .where(s.domain == bindparam("domain"), s.id_type == bindparam("id_type"), s.id_value.in_(values))
            .order_by(s.id_value, c.seq))

    # --- searches -------------------------------------------------------------------------------
    def search(self, shape: _Shape) -> Any:
        found = self._searches.get(shape)
        if found is None:
            with self._lock:
                found = self._searches.get(shape)
                if found is None:
                    found = self._searches[shape] = self._build.compile(_search_statement(self._build, shape))
        return found


def _search_statement(build: SqlBuilder, shape: _Shape) -> Any:
    by_policy = shape.kind in ("policies", "count-policies")
    seq = sp.seq if by_policy else c.seq  # the criteria on consents apply to the driving table's seq
    on_consents: list[ColumnElement[bool]] = []
    if shape.template:
        on_consents += [c.template_name == bindparam("template_name"),
                        c.template_version == bindparam("template_version")]
    if shape.signers:
        on_consents.append(seq.in_(_of_signers(build.rows("signers", id_type=String(), id_value=Text()))))
    on_policies: list[ColumnElement[bool]] = []
    if shape.names:
        on_policies.append(build.in_batch(sp.policy_name, "names"))
    if shape.permit is not None:
        permits = and_(or_(*(sp.status == bindparam(f"permitting_{i}", value) for i, value in enumerate(PERMITTING))),
                       sp.ends_at > bindparam("at"))
        on_policies.append(permits if shape.permit else not_(permits))
    for index, prefix in enumerate(shape.periods):
        on_policies.append(_period(prefix, bindparam(f"low_{index}", type_=BigInteger),
                                   bindparam(f"high_{index}", type_=BigInteger)))
    columns: tuple[Any, ...] = CONSENT_COLUMNS + ((r.resources,) if shape.resources else ())
    if by_policy:
        needs_consent = shape.template or shape.kind == "policies"
        source = signed_policy.join(consent, c.seq == sp.seq) if needs_consent else signed_policy
        where = [sp.domain == bindparam("domain"), *on_policies, *on_consents]
        if shape.kind == "count-policies":
            return select(func.count()).select_from(source).where(*where)
        if shape.resources:
            source = source.outerjoin(consent_resources, r.seq == c.seq)
        return (select(*columns, sp.position).select_from(source).where(*where)
                .order_by(sp.seq, sp.position).limit(bindparam("limit")).offset(bindparam("offset")))
    where = [c.domain == bindparam("domain"), *on_consents]
    if on_policies:
        where.append(exists(select(sp.seq).where(sp.domain == c.domain, sp.seq == c.seq, *on_policies)))
    if shape.kind == "count-consents":
        return select(func.count()).select_from(consent).where(*where)
    return (select(*columns).select_from(consent.outerjoin(consent_resources, r.seq == c.seq)).where(*where)
            .order_by(c.seq).limit(bindparam("limit")).offset(bindparam("offset")))


def _of_signers(signers: Any) -> Any:
    """The seqs of the consents that carry any of a batch of signer ids. A row-value IN, so that
    the planner looks each id up in the key rather than scanning the domain's ids for each."""
    return select(s.seq).where(s.domain == bindparam("domain"),
                               tuple_(s.id_type, s.id_value).in_(select(signers.c.id_type, signers.c.id_value)))


def _period(prefix: str, low: Any, high: Any) -> ColumnElement[bool]:
    """FHIR date search on the period [start, end) of a signed policy against the searched
    value's range [low, high)."""
    start, end = sp.starts_at, sp.ends_at
    covers = and_(start <= low, end >= high)
    return {"eq": covers, "ne": not_(covers), "gt": end > high, "ge": end > low, "lt": start < low,
            "le": start < high, "sa": start >= high, "eb": end <= low}[prefix]


class SqlConsentStore(ConsentStore):
    def __init__(self, session: SqlSession) -> None:
        self._sql = prepared(_Statements, session.dialect)
        self._run = session.run
        self._session = session

    # --- the catalogue ----------------------------------------------------------------------
    def load_catalogue(self) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        domains = [_json(settings) for (settings,) in self._run(self._sql.domains)]
        return (domains, *(  # type: ignore[return-value]
            [_json(settings) for (settings,) in self._run(self._sql.versions[table.name])]
            for table in (policy_table, module_table, template_table)))

    def put_domains(self, domains: Sequence[ConsentDomain]) -> list[bool]:
        if not domains:
            return []
        rows = [(d.name, _text(catalogue_settings(d))) for d in domains]
        created = {name for (name,) in self._run(self._sql.insert_domains, domains=rows)}
        self._session.run_many(self._sql.update_domain, [{"key_name": name, "settings": settings}
                                                         for name, settings in rows if name not in created])
        return [d.name in created for d in domains]

    def put_versions(self, items: Sequence[Policy | Module | Template]) -> list[bool]:
        created: set[tuple[str, str, str, str]] = set()
        for kind, table in VERSIONED.items():
            rows = [(i.domain, i.name, i.version, _text(catalogue_settings(i))) for i in items if isinstance(i, kind)]
            if not rows:
                continue
            inserted = {tuple(row) for row in self._run(self._sql.insert_versions[table.name], versions=rows)}
            created |= {(table.name, *key) for key in inserted}  # type: ignore[arg-type]
            self._session.run_many(self._sql.update_version[table.name], [
                {"key_domain": d, "key_name": n, "key_version": v, "settings": settings}
                for d, n, v, settings in rows if (d, n, v) not in inserted])
        return [(VERSIONED[type(i)].name, i.domain, i.name, i.version) in created for i in items]

    # --- consents ---------------------------------------------------------------------------
    def add_consents(self, consents: Sequence[SignedConsent]) -> list[SignedConsent]:
        if not consents:
            return []
        fingerprints = [item.fingerprint for item in consents]
        rows = [(item.id, fingerprint, item.domain, item.template.name, item.template.version,
                 item.template_type.value, to_millis(item.date), to_millis(item.recorded),
                 _text(signer_rows(item.signer_ids)), _text(module_rows(item)), _text(policy_rows(item)))
                for item, fingerprint in zip(consents, fingerprints)]
        stored = {fingerprint: seq for seq, fingerprint in self._run(self._sql.insert_consents, consents=rows)}
        kept: dict[str, SignedConsent] = {}
        for item, fingerprint in zip(consents, fingerprints):
            if fingerprint in stored and fingerprint not in kept:
                kept[fingerprint] = _with_seq(item, stored[fingerprint])
        new = list(kept.values())
        if new:
            self._run(self._sql.insert_signers, new_signers=[
                (item.domain, signer.type, signer.value, item.seq) for item in new for signer in sorted(item.signer_ids)])
            self._run(self._sql.insert_policies, new_policies=[
                (item.domain, item.seq, position, p.name, p.version, p.status.value, to_millis(item.date),
                 policy_end(p)) for item in new for position, p in enumerate(item.policies)])
            self._run(self._sql.insert_resources, new_resources=[(item.seq, _text(dict(item.resources))) for item in new])
        missing = sorted({f for f in fingerprints if f not in kept})
        if missing:
            for row in self._run(self._sql.by_fingerprints, fingerprints=missing):
                kept[row[WIDTH]] = _consent(row[:WIDTH], None)
        return [kept[f] for f in fingerprints]

    def consents_of_persons(self, domain_name: str, signer_ids: Sequence[SignerId], *,
                            resources: bool = False) -> list[SignedConsent]:
        if not signer_ids:
            return []
        if len(signer_ids) == 1:  # one person by one id: the most frequent question of all
            rows = self._run(self._sql.person[resources], domain=domain_name, id_type=signer_ids[0].type,
                             id_value=signer_ids[0].value)
        else:
            rows = self._run(self._sql.persons[resources], domain=domain_name,
                             signers=[(x.type, x.value) for x in signer_ids])
        return [_consent(row, resources) for row in rows]

    def consents_page(self, domain_name: str, *, offset: int = 0, limit: int, template: Key | None = None,
                      resources: bool = True) -> list[SignedConsent]:
        if limit <= 0:
            return []
        params = _template_params(template)
        rows = self._run(self._sql.pages[(resources, template is not None)], domain=domain_name, offset=offset,
                         limit=limit, **params)
        return [_consent(row, resources) for row in rows]

    def count_consents(self, domain_name: str, template: Key | None = None) -> int:
        return int(self._run(self._sql.counts[template is not None], domain=domain_name,
                             **_template_params(template))[0][0])

    def signers_page(self, domain_name: str, id_type: str, *, after: str = "",
                     limit: int) -> list[tuple[str, list[SignedConsent]]]:
        found: dict[str, list[SignedConsent]] = {}
        for row in self._run(self._sql.signers_page, domain=domain_name, id_type=id_type, after=after, limit=limit):
            found.setdefault(row[0], []).append(_consent(row[1:], False))
        return list(found.items())

    # --- search -------------------------------------------------------------------------------
    def signed_policies_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int,
                             resources: bool = False) -> list[tuple[SignedConsent, SignedPolicy]]:
        if limit <= 0:
            return []
        rows = self._search("policies", wanted, resources, offset=offset, limit=limit)
        found = []
        for row in rows:
            kept = _consent(row, resources)
            found.append((kept, kept.policies[row[-1]]))
        return found

    def count_signed_policies(self, wanted: PolicyFilter) -> int:
        return int(self._search("count-policies", wanted)[0][0])

    def matching_consents_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int) -> list[SignedConsent]:
        if limit <= 0:
            return []
        return [_consent(row, True) for row in self._search("consents", wanted, True, offset=offset, limit=limit)]

    def count_matching_consents(self, wanted: PolicyFilter) -> int:
        return int(self._search("count-consents", wanted)[0][0])

    def _search(self, kind: str, wanted: PolicyFilter, resources: bool = False, **paging: int) -> list[tuple]:
        if wanted.policies is not None and not wanted.policies:
            return [] if kind in ("policies", "consents") else [(0,)]
        shape = _Shape(kind, bool(wanted.signer_ids), wanted.template is not None, wanted.policies is not None,
                       wanted.permit, tuple(prefix for prefix, _, _ in wanted.periods), resources)
        params: dict[str, Any] = {"domain": wanted.domain, **_template_params(wanted.template), **paging}
        if wanted.signer_ids:
            params["signers"] = [(x.type, x.value) for x in wanted.signer_ids]
        if wanted.policies is not None:
            params["names"] = sorted(wanted.policies)
        if wanted.permit is not None:
            params["at"] = to_millis(wanted.at)  # type: ignore[arg-type]
        for index, (_, low, high) in enumerate(wanted.periods):
            params[f"low_{index}"], params[f"high_{index}"] = to_millis(low), to_millis(high)
        return self._run(self._sql.search(shape), **params)


def _template_params(template: Key | None) -> dict[str, str]:
    return {} if template is None else {"template_name": template.name, "template_version": template.version}


def _with_seq(item: SignedConsent, seq: int) -> SignedConsent:
    from dataclasses import replace

    return replace(item, seq=seq)


def _consent(row: Sequence[Any], resources: bool | None) -> SignedConsent:
    (seq, id_, domain_name, template_name, template_version, template_type, signed_at, recorded_at, signers,
     modules, policies) = row[:WIDTH]
    return consent_of(seq=seq, id=id_, domain=domain_name, template_name=template_name,
                      template_version=template_version, template_type=template_type, signed_at=signed_at,
                      recorded_at=recorded_at, signer_ids=_json(signers), modules=_json(modules),
                      policies=_json(policies), resources=_json(row[WIDTH]) if resources and row[WIDTH] else None)


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value
