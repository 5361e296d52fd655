"""ttp-idm (diz-unimr/ttp-idm, Rust, reqwest + fhir-model), src/ttp/client.rs and gpas.rs.

- Every request carries the client's default `Content-Type: application/fhir+json` and reqwest's
  `Accept: */*`, the metadata GET included.
- `POST {gpas.base_url}/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate` (`target` = the trial,
  `original` = the MPI id, valueString); it reads every parameter named `pseudonym`, its part
  `pseudonym` as Identifier, and takes the first value.
- `POST …/$pseudonymize-secondary` with one `original` of parts `target` = "<trial>_<lab>",
  `value`, `count` — count as valueString; it collects the `value` part (Identifier) of every
  `secondarypseudonym` parameter.
- The connection test is `GET …/ttp-fhir/fhir/gpas/metadata`, status only.

A site sets `ttp.gpas.base_url` to the server (without path). The trial's domains (here the
README example: `Studie`, `Studie_Labor 1`, `Studie_Labor 2`) are created by ttp-idm itself over
gPAS's SOAP domain service, which this service does not offer: create them in the configuration.
"""

from __future__ import annotations

from client_wire import GPAS, json_parameters, sqlite_storage_url, value_of, wire_client  # noqa: F401


def identifiers(response, parameter_name: str, part_name: str) -> list[str]:
    assert response.status_code == 200, response.text
    found = []
    for parameter in json_parameters(response):
        if parameter["name"] != parameter_name:
            continue
        for part in parameter["part"]:
            kind, value = value_of(part)
            if part["name"] == part_name and kind == "Identifier":
                found.append(value["value"])
    return found


def test_trial_pseudonym_and_lab_pseudonyms(demo_config) -> None:
    with wire_client(demo_config, accept="*/*", **{"Content-Type": "application/fhir+json"}) as client:
        client.get(f"{GPAS}/metadata").raise_for_status()
        mpi = {"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": "Studie"}, {"name": "original", "valueString": "MPI-42"}]}
        participant = identifiers(client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=mpi),
                                  "pseudonym", "pseudonym")
        assert len(participant) == 1
        secondary = {"resourceType": "Parameters", "parameter": [{"name": "original", "part": [
            {"name": "target", "valueString": "Studie_Labor 1"}, {"name": "value", "valueString": "MPI-42"},
            {"name": "count", "valueString": "2"}]}]}
        lab = identifiers(client.post(f"{GPAS}/$pseudonymize-secondary", json=secondary),
                          "secondarypseudonym", "value")
        assert len(set(lab)) == 2 and participant[0] not in lab
