"""Dispatcher commands: `ttp-gateway studies list|create` (admin, on storage) and
`ttp-gateway bloomfilter encode` (a site's tool: records in, their Bloom filters out).

    ttp-gateway bloomfilter encode --seeds SEEDS.toml [--length 800] [--vocabulary ...] < in.csv > out.csv

The seeds file holds the Mainzelliste fTTP library's properties under their own names, as TOML
(or JSON for a .json file); `--length` and `--vocabulary` override the file:

    balanced.seed = 154866848
    field.firstName.seed = 487484864     # one seed per field that goes into the filter
    field.lastName.seed = 311296856
    field.birthDate.seed = 897689196
    field.gender.seed = 298767897
    length = 800                         # optional; the library's default is 900
    vocabulary = "ABCDEFGHIJKLMNOPQRSTUVWXYZ .-0123456789"   # optional; the library's default
    # optional, the library's transformers; without any, first and last name are normalised as
    # the library's README does it and the other fields are taken as given:
    # field.firstName.transformer.0.type = "StringFieldTransformer" ...

The input CSV's header names the columns; columns named like a seeded field are encoded (an
empty cell is an empty value, as the library takes a null), a field without a column is left
out, and every other column (a record id) is passed through. The output has those other
columns and `bloomfilter` (base64, as the sites send it); the identifying data stay out of it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path
from typing import IO

from ttp_gateway.plugins.gpas.api import GPAS

from .api import DISPATCHER
from .encoder import RecordFilterEncoder, RecordFilterSpec, spec_from_properties
from .studies import DEFAULT_ELEMENTS, Study

FILTER_COLUMN = "bloomfilter"


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
    create.add_argument("--match-threshold", type=float, default=Study.match_threshold)
    create.add_argument("--possible-match-threshold", type=float, default=Study.possible_match_threshold)
    create.add_argument("--task-ttl-hours", type=float, default=14 * 24)
    create.add_argument("--idat-elements", nargs="+", default=list(DEFAULT_ELEMENTS))
    create.set_defaults(run=create_study)

    filters = subparsers.add_parser("bloomfilter", help="record Bloom filters as the sites make them")
    filter_actions = filters.add_subparsers(metavar="ACTION")
    encode = filter_actions.add_parser(
        "encode", help="encode a CSV of records (Mainzelliste fTTP library, bit for bit)",
        description="Encode each CSV record into a balanced record Bloom filter, bit for bit as the "
                    "Mainzelliste fTTP client library makes it; output: the other columns and 'bloomfilter'.")
    encode.add_argument("--seeds", required=True, metavar="FILE",
                        help="TOML (or .json) file with the library's properties: balanced.seed, "
                             "field.<name>.seed, optionally length, vocabulary, transformers")
    encode.add_argument("--length", type=int, help="the library's length; filters have twice as many bits")
    encode.add_argument("--vocabulary", help="the characters whose bigrams set bits")
    encode.add_argument("--input", default="-", metavar="CSV", help="default: standard input")
    encode.add_argument("--output", default="-", metavar="CSV", help="default: standard output")
    encode.add_argument("--delimiter", default=",", help="CSV delimiter (default ',')")
    encode.set_defaults(run=encode_filters, gateway=False)


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


# --- bloomfilter encode ---------------------------------------------------------------------------

def encode_filters(args: argparse.Namespace, _gateway: None) -> int:
    """Records from CSV in, their filters out. Errors name lines and columns, never values."""
    spec = read_spec(Path(args.seeds), length=args.length, vocabulary=args.vocabulary)
    if len(args.delimiter) != 1:
        raise ValueError("the delimiter must be one character")
    encoder = RecordFilterEncoder(spec)
    text = _read_text(args.input)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=args.delimiter, strict=True)
    try:
        header = next(rows, None)
        if not header:
            raise ValueError("the input has no header line")
        fields = [name for name in header if name in spec.seeds]
        if not fields:
            raise ValueError(f"the header names no field with a seed ({', '.join(spec.fields)})")
        duplicated = [name for name, count in Counter(header).items() if count > 1]
        if duplicated:
            raise ValueError(f"the header names column(s) twice: {', '.join(duplicated)}")
        if FILTER_COLUMN in header:
            raise ValueError(f"the input has a '{FILTER_COLUMN}' column already")
        passed = [i for i, name in enumerate(header) if name not in spec.seeds]
        outside: Counter[str] = Counter()
        with _Output(args.output) as out:
            writer = csv.writer(out, delimiter=args.delimiter, lineterminator="\n")
            writer.writerow([header[i] for i in passed] + [FILTER_COLUMN])
            count = 0
            for row in rows:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise ValueError(f"line {rows.line_num}: {len(row)} cells where the header has {len(header)}")
                record = {name: value for name, value in zip(header, row) if name in spec.seeds}
                outside.update(encoder.outside_vocabulary(record))
                writer.writerow([row[i] for i in passed] + [encoder.encode_base64(record)])
                count += 1
    except csv.Error:
        raise ValueError(f"line {rows.line_num}: not valid CSV") from None
    for name, records in sorted(outside.items()):
        print(f"warning: {records} record(s) have characters outside the vocabulary in {name}; they set "
              "no bits (is the value written as the network agrees?)", file=sys.stderr)
    print(f"encoded {count} record(s) into {spec.filter_bits}-bit filters", file=sys.stderr)
    return 0


def read_spec(path: Path, *, length: int | None = None, vocabulary: str | None = None) -> RecordFilterSpec:
    """The spec a seeds file (TOML, or JSON by its suffix) describes."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the seeds file {path}: {error.strerror}") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        properties = json.loads(raw) if kind == "JSON" else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):  # messages may quote the file: it holds secrets
        raise ValueError(f"the seeds file {path} is not valid {kind}") from None
    if not isinstance(properties, dict):
        raise ValueError(f"the seeds file {path} holds no table of settings")
    return spec_from_properties(properties, length=length, vocabulary=vocabulary)


def _read_text(name: str) -> str:
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the input {name}: {error.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the input is not UTF-8 text") from None


class _Output:
    """Standard output, or a file that appears only when every record was encoded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.temporary: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        if self.name == "-":
            return sys.stdout
        folder = Path(self.name).resolve().parent
        try:
            self.temporary = tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=folder,
                                                         prefix=".bloomfilter-", delete=False)
        except OSError as error:
            raise ValueError(f"cannot write the output {self.name}: {error.strerror}") from None
        return self.temporary

    def __exit__(self, kind, error, traceback) -> None:
        if self.temporary is None:
            return
        self.temporary.close()
        if kind is None:
            os.replace(self.temporary.name, self.name)
        else:
            os.unlink(self.temporary.name)
