"""Helpers for dispatcher tests: Bloom filters of chosen similarity, IDAT Patients, a clock."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from conftest import parameters
from ttp_gateway.plugins.dispatcher import bloom

DISPATCHER = "/ttp-fhir/fhir/dispatcher"
LENGTH = 1600  # bits of the demo studies' version "1"


def balanced_filter(rng: random.Random, length: int = LENGTH) -> tuple[bytes, set[int]]:
    """A random filter with exactly half of its bits set, and those bits."""
    ones = set(rng.sample(range(length), length // 2))
    return bloom.from_positions(ones, length), ones


def similar_filter(ones: set[int], dice: float, rng: random.Random, length: int = LENGTH) -> bytes:
    """A balanced filter whose Dice coefficient with `ones` is `dice` (to 1/|ones|)."""
    moved = round(len(ones) * (1 - dice))
    zeros = sorted(set(range(length)) - ones)
    kept = set(rng.sample(sorted(ones), len(ones) - moved))
    return bloom.from_positions(kept | set(rng.sample(zeros, moved)), length)


def b64(data: bytes) -> str:
    return bloom.encode_filter(data)


def idat_patient(given: str, family: str, birth_date: str, gender: str, birth_place: str = "Musterhausen",
                 degree: str | None = None) -> dict:
    name: dict = {"family": family, "given": given.split()}
    if degree:
        name["prefix"] = [degree]
        name["_prefix"] = [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
                                           "valueCode": "AC"}]}]
    return {"resourceType": "Patient",
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                           "valueAddress": {"city": birth_place}}],
            "name": [name], "gender": gender, "birthDate": birth_date}


@dataclass
class Clock:
    """A clock the tests move forward."""

    now: datetime = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Site:
    """One site's client: the calls a data integration centre makes."""

    def __init__(self, client, name: str, study: str = "mii") -> None:
        self.client, self.name, self.study = client, name, study

    def post(self, operation: str, body: dict, status: int = 200) -> dict:
        response = self.client.post(f"{DISPATCHER}/${operation}", json=body)
        assert response.status_code == status, response.text
        return response.json()

    def request_psn(self, *filters: str, status: int = 200) -> list[tuple[str, str]]:
        """(kind, value) per filter: ("pseudonym", psn) or ("error", code)."""
        answer = self.post("requestPsnFromBfWorkflow", parameters(
            ("study", self.study), *[("bloomfilter", {"valueBase64Binary": f}) for f in filters],
            ("target", self.name)), status)
        if status != 200:
            return [("outcome", answer["issue"][0]["code"])]
        results = []
        for param in answer["parameter"]:
            parts = {p["name"]: p for p in param["part"]}
            if param["name"] == "pseudonym-bf":
                results.append(("pseudonym", parts["pseudonym"]["valueIdentifier"]["value"]))
            else:
                results.append(("error", parts["error-code"]["valueCoding"]["code"]))
        return results

    def tasks(self) -> list[dict]:
        answer = self.post("requestTasks", parameters(("study", self.study), ("target", self.name)))
        tasks = []
        for param in answer.get("parameter", []):
            task: dict = {"kind": param["name"], "elements": []}
            for part in param["part"]:
                value = next(v for k, v in part.items() if k.startswith("value"))
                if part["name"] == "element":
                    task["elements"].append(value["code"])
                else:
                    task[part["name"]] = value["value"] if isinstance(value, dict) else value
            tasks.append(task)
        return tasks

    def provide(self, task_id: str, patient: dict, status: int = 200) -> dict:
        return self.post("providePatientData", parameters(
            ("taskId", {"valueId": task_id}), ("target", self.name), ("patient", {"resource": patient})), status)

    def project_pseudonym(self, pseudonym: str, target: str = "eyematics") -> str | None:
        answer = self.post("requestPsnWorkflow", parameters(
            ("study", self.study), ("original", pseudonym), ("source", self.name), ("target", target)))
        param = answer["parameter"][0]
        if param["name"] != "pseudonym":
            return None
        return next(p["valueIdentifier"]["value"] for p in param["part"] if p["name"] == "pseudonym")
