"""$pseudonymizePatient: linking a Patient by identifiers, Bloom filter or demographics, and the
meaning of `count`."""

from __future__ import annotations

import random

import pytest

from dispatch import DISPATCHER, b64, balanced_filter, similar_filter

KVID = "http://fhir.de/sid/gkv/kvid-10"
MR = "http://my.fhir.domain.local/fhir/sid/patients"
BF = "https://ths-greifswald.de/fhir/sid/epix/bloomfilter"


def patient(patient_id: str = "p-1", identifiers: list[dict] = (), **demographics) -> dict:
    resource: dict = {"resourceType": "Patient", "id": patient_id}
    if identifiers:
        resource["identifier"] = list(identifiers)
    if demographics:
        resource["name"] = [{"family": demographics["family"], "given": [demographics["given"]]}]
        resource["birthDate"] = demographics["birth_date"]
        resource["gender"] = demographics["gender"]
    return resource


def entry(resource: dict, *contexts: tuple[str, int | None], study: str = "MyStudy") -> dict:
    parts = []
    for target, count in contexts:
        context = [{"name": "target", "valueString": target}]
        if count is not None:
            context.append({"name": "count", "valueInteger": count})
        parts.append({"name": "context", "part": context})
    return {"request": {"method": "POST", "url": "$pseudonymizePatient"}, "resource": {
        "resourceType": "Parameters", "parameter": [
            {"name": "study", "valueString": study}, {"name": "patient", "resource": resource}, *parts]}}


def send(client, *entries: dict) -> list[tuple[str, dict[str, list[str]] | None]]:
    """(status, {target: pseudonyms}) per entry."""
    response = client.post(f"{DISPATCHER}/$pseudonymizePatient",
                           json={"resourceType": "Bundle", "type": "batch", "entry": list(entries)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "batch-response"
    results = []
    for item in answer["entry"]:
        values = None
        if "resource" in item:
            values = {}
            for param in item["resource"]["parameter"][1:]:
                target = param["part"][0]["valueIdentifier"]["value"]
                values[target] = [p["valueIdentifier"]["value"] for p in param["part"][1:]]
        results.append((item["response"]["status"], values))
    return results


def kvid(value: str) -> dict:
    return {"system": KVID, "value": value}


def test_the_same_kvid_is_the_same_person(client) -> None:
    [(status, first)] = send(client, entry(patient(identifiers=[kvid("A123456789")]), ("MyStudy-Domain1", None)))
    assert status == "200" and len(first["MyStudy-Domain1"]) == 1
    # Another identifier, the same KVID (spelled in lower case): the same person.
    again = patient(identifiers=[{"system": MR, "value": "77"}, kvid("a123456789")])
    assert send(client, entry(again, ("MyStudy-Domain1", 1))) == [("200", first)]
    # The other identifier now finds the person too.
    assert send(client, entry(patient(identifiers=[{"system": MR, "value": "77"}]), ("MyStudy-Domain1", 1))) \
        == [("200", first)]
    # An identifier of the same value in another system is someone else.
    other = send(client, entry(patient(identifiers=[{"system": "urn:other", "value": "77"}]), ("MyStudy-Domain1", 1)))
    assert other[0][1] != first


def test_count_zero_only_looks_up(client) -> None:
    unknown = patient(identifiers=[kvid("Z000000001")])
    assert send(client, entry(unknown, ("MyStudy-Domain1", 0))) == [("200", {"MyStudy-Domain1": []})]
    [(_, created)] = send(client, entry(unknown, ("MyStudy-Domain1", 1)))
    assert send(client, entry(unknown, ("MyStudy-Domain1", 0))) == [("200", created)]


def test_several_pseudonyms_only_in_multi_psn_domains(client) -> None:
    person = patient(identifiers=[kvid("M000000001")])
    [(status, three)] = send(client, entry(person, ("MyStudy-Domain2", 3)))
    assert status == "200" and len(set(three["MyStudy-Domain2"])) == 3
    [(_, two)] = send(client, entry(person, ("MyStudy-Domain2", 2)))
    assert two["MyStudy-Domain2"] == three["MyStudy-Domain2"][:2]  # the first ones, none new
    [(status, _)] = send(client, entry(person, ("MyStudy-Domain1", 2)))
    assert status == "422"


def test_demographics_link_when_there_is_no_identifier(client) -> None:
    martha = dict(family="Müller", given="Martha", birth_date="1950-03-01", gender="female")
    [(_, first)] = send(client, entry(patient(**martha), ("MyStudy-Domain1", 1)))
    spelled = {**martha, "family": "MUELLER"}  # normalised alike
    assert send(client, entry(patient(**spelled), ("MyStudy-Domain1", 1))) == [("200", first)]
    namesake = {**martha, "birth_date": "1951-03-01"}
    assert send(client, entry(patient(**namesake), ("MyStudy-Domain1", 1)))[0][1] != first


def test_a_bloom_filter_identifier_links_by_similarity(client) -> None:
    rng = random.Random(5)
    data, ones = balanced_filter(rng)

    def with_filter(filter_text: str) -> dict:
        return patient(identifiers=[{"type": {"coding": [
            {"system": "https://ths-greifswald.de/fhir/CodeSystem/epix/BloomfilterType", "code": "A"}]},
            "system": BF, "value": filter_text}])

    [(_, first)] = send(client, entry(with_filter(b64(data)), ("MyStudy-Domain1", 1)))
    assert send(client, entry(with_filter(b64(similar_filter(ones, 0.97, rng))), ("MyStudy-Domain1", 1))) \
        == [("200", first)]
    assert send(client, entry(with_filter(b64(similar_filter(ones, 0.6, rng))), ("MyStudy-Domain1", 1)))[0][1] != first
    [(status, _)] = send(client, entry(with_filter("not base64!"), ("MyStudy-Domain1", 1)))
    assert status == "422"


def test_entries_fail_alone(client) -> None:
    results = send(client,
                   entry(patient(identifiers=[kvid("E000000001")]), ("MyStudy-Domain1", 1)),
                   entry(patient(identifiers=[kvid("E000000002")]), ("MyStudy-Domain1", 1), study="NoStudy"),
                   entry(patient(identifiers=[kvid("E000000003")]), ("Elsewhere", 1)),
                   {"request": {"url": "$pseudonymizePatient"}, "resource": {"resourceType": "Patient"}},
                   entry({"resourceType": "Patient", "gender": "xyz"}, ("MyStudy-Domain1", 1)))
    assert [status for status, _ in results] == ["200", "404", "404", "400", "422"]
    assert results[2][1] == {"Elsewhere": []}


@pytest.mark.parametrize("body", [{"resourceType": "Bundle", "type": "transaction", "entry": []},
                                  {"resourceType": "Bundle", "type": "batch", "entry": {}}])
def test_malformed_bundles_are_400(client, body) -> None:
    assert client.post(f"{DISPATCHER}/$pseudonymizePatient", json=body).status_code == 400
