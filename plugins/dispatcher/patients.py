"""`$pseudonymizePatient`: link a Patient by its identifiers or demographics, answer pseudonyms.

A Patient is linked, in this order, by its KVID-10, by any other identifier within its system,
by a Bloom filter identifier (Dice at or above the study's match threshold), or by its
demographics (family and given names, birth date and sex, normalised and compared exactly);
a Patient that none of these finds becomes a new person. Identifiers and demographics are kept
only as keyed hashes (HMAC-SHA256 with `[dispatcher] identifier_secret`): enough to find the
person again, useless for learning who it is.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import NotFound, Unprocessable
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Result

from . import bloom
from .idat import ADMINISTRATIVE_GENDERS, normalise_name
from .linkage import Linker
from .store import LINKAGE, LinkageStore
from .studies import Study, StudyRegistry

KVID_SYSTEM = "http://fhir.de/sid/gkv/kvid-10"
BLOOM_FILTER_SYSTEM = "https://ths-greifswald.de/fhir/sid/epix/bloomfilter"
SYSTEM = "https://ths-greifswald.de/gpas"  # the guide's Identifier.system, the default
SITE = ""  # filters given in a Patient come from no particular site


class PatientLinker:
    def __init__(self, studies: StudyRegistry, linker: Linker, secret: bytes, system: str = SYSTEM) -> None:
        self.studies = studies
        self.linker = linker
        self._secret = secret
        self.system = system

    def pseudonymize_patient(self, call: Call) -> dict | Result:
        study = self.studies.get(call.args["study"])
        if study is None:
            raise NotFound(f"study {call.args['study']!r} is not known")
        patient = call.args["patient"]
        try:
            Patient.model_validate(patient)
        except ValidationError:
            # The validation message quotes the Patient's values; only say where it failed.
            raise Unprocessable("the Patient is not a valid FHIR Patient") from None
        if "gender" in patient and patient["gender"] not in ADMINISTRATIVE_GENDERS:
            raise Unprocessable("the Patient's gender is not an administrative gender code")
        contexts = [(c["target"], 1 if c["count"] is None else c["count"]) for c in call.args["context"]]
        external_id = str(patient.get("id", ""))
        system = study.identifier_system or self.system
        unknown = [target for target, _ in contexts if target not in study.domains]
        if unknown:
            return Result(_answer(external_id, {t: [] for t, _ in contexts}, system), status=404,
                          outcome=fhir.operation_outcome("error", "not-found",
                                                         f"Target domain {unknown[0]!r} not found."))
        domains = {target: self.linker.pseudonyms.domain(target) for target, _ in contexts}
        for target, count in contexts:
            if count < 0 or (count > 1 and not domains[target].multi_psn):
                raise Unprocessable(f"count {count} is not possible in domain {target!r}"
                                    + (" (not multi-psn)" if count > 1 else ""))
        keys = self._keys(patient)
        filters = self._filters(study, patient)
        read_only = all(count == 0 for _, count in contexts)
        psn = self.linker.pseudonyms
        with (call.reading() if read_only else call.writing()) as unit:
            store = unit[LINKAGE]
            if not read_only:
                store.lock_study(study.name)
            known = store.find_persons(study.name, keys)
            person = next((known[k] for k in keys if k in known), None)
            if person is None and filters:
                person = self._by_filter(store, study, filters)
            if person is None and not read_only:
                person = store.create_persons(study.name, 1)[0]
            values: dict[str, list[str]] = {target: [] for target, _ in contexts}
            if person is not None and not read_only:
                store.add_person_keys(study.name, [(key, person) for key in keys])
                store.add_bloom_filters(study.name, [(person, SITE, version, data) for version, data in filters])
            if person is not None:
                key = study.person_key(person)
                for target, count in contexts:
                    held = psn.all_pseudonyms(unit, domains[target], [key]).get(key, [])
                    if count == 0:
                        values[target] = held
                    elif count == 1 and not held:
                        values[target] = [psn.get_or_create(unit, domains[target], [key])[key]]
                    else:
                        missing = count - len(held)
                        added = psn.add_further(unit, domains[target], [(key, missing)]) if missing > 0 else []
                        values[target] = (held + [p for _, p in added])[:count]
        call.audit("pseudonymize-patient", study=study.name, domains=sorted(values),
                   created=person is not None and not read_only)
        return _answer(external_id, values, system)

    def _keys(self, patient: dict) -> list[str]:
        """Keyed hashes of the Patient's identifiers (KVID first) and of its demographics."""
        identifiers = [i for i in patient.get("identifier", []) or []
                       if i.get("system") and i.get("value") and i.get("system") != BLOOM_FILTER_SYSTEM]
        identifiers.sort(key=lambda i: i["system"] != KVID_SYSTEM)
        keys = [self._hash("identifier", i["system"], i["value"].strip().upper()
                           if i["system"] == KVID_SYSTEM else i["value"]) for i in identifiers]
        names = [n for n in patient.get("name", []) or [] if n.get("use") != "maiden"]
        if names and patient.get("birthDate") and patient.get("gender"):
            family = normalise_name(names[0].get("family"))
            given = normalise_name(" ".join(names[0].get("given", []) or []))
            if family and given:
                keys.append(self._hash("demographics", family, given, patient["birthDate"], patient["gender"]))
        return keys

    def local_key(self, site: str, identifier: str) -> str:
        """The keyed hash under which a site's own local identifier of a person is kept."""
        return self._hash("local", site, identifier)

    def _hash(self, *parts: str) -> str:
        return hmac.new(self._secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _filters(study: Study, patient: dict) -> list[tuple[str, bytes]]:
        """(version, filter) of each Bloom filter identifier; its type code names the version."""
        found = []
        for identifier in patient.get("identifier", []) or []:
            if identifier.get("system") != BLOOM_FILTER_SYSTEM or not identifier.get("value"):
                continue
            codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding", []) or []]
            version = next((c for c in codes if c in study.versions), study.default_version)
            try:
                found.append((version, bloom.decode_filter(identifier["value"], study.versions[version].length)))
            except ValueError:
                raise Unprocessable("a Bloom filter identifier of the Patient is not a valid filter") from None
        return found

    def _by_filter(self, store: LinkageStore, study: Study, filters: list[tuple[str, bytes]]) -> int | None:
        best: tuple[float, int] | None = None
        for version, data in filters:
            index, _ = self.linker.indexes.synced(study, version)
            for bf, score in index.search(data, study.match_threshold, limit=1):
                owner = store.get_bloom_filter_owners(study.name, [bf]).get(bf)
                if owner is not None and (best is None or score > best[0]):
                    best = (score, owner[0])
        return best[1] if best else None


def _answer(external_id: str, values: dict[str, list[str]], system: str) -> dict:
    parameters: list[dict[str, Any]] = [{"name": "externalPatientId", "valueId": external_id}]
    for target, pseudonyms in values.items():
        parts = [{"name": "target", "valueIdentifier": {"system": system, "value": target}}]
        parts += [{"name": "value", "valueIdentifier": {"system": system, "value": p}} for p in pseudonyms]
        parameters.append({"name": "pseudonym", "part": parts})
    return fhir.parameters(parameters)
