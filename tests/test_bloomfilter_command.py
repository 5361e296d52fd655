"""`ttp-gateway bloomfilter encode`: a site's records in as CSV, their filters out, bit for bit
as the Mainzelliste fTTP library makes them; no configuration or storage needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_encoder import BALANCED_SEED, MUSTERMANN_FILTER, PUBLISHED_PROPERTIES_TOML, SEEDS
from ttp_gateway.core.cli import main
from ttp_gateway.plugins.dispatcher import bloom
from ttp_gateway.plugins.dispatcher.encoder import PUBLISHED_VOCABULARY

SEEDS_TOML = f'''
balanced.seed = {BALANCED_SEED}
vocabulary = "{PUBLISHED_VOCABULARY}"
''' + "".join(f"field.{name}.seed = {seed}\n" for name, seed in SEEDS.items())
RECORDS = ("id,firstName,lastName,birthDate,gender,site\n"
           "r1,Herr,Mustermann,19200101,m,mainz\n"
           "\n"
           "r2,Erika,Gabler-Mustermann,19640812,f,kiel\n")


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.toml"
    path.write_text(SEEDS_TOML)
    return path


@pytest.fixture(autouse=True)
def no_usable_configuration(monkeypatch, tmp_path: Path) -> None:
    # The command must not load a configuration or open storage: both would fail here.
    monkeypatch.setenv("TTP_GATEWAY_CONFIG", str(tmp_path / "missing.toml"))
    monkeypatch.setenv("TTP_GATEWAY__STORAGE__URL", "postgresql://nobody@127.0.0.1:1/none")


def encode(capsys, tmp_path: Path, text: str, *options: str) -> tuple[int, str, str]:
    source = tmp_path / "in.csv"
    source.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    code = main(["bloomfilter", "encode", "--input", str(source), *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_encodes_records_like_the_library(capsys, tmp_path: Path, seeds: Path) -> None:
    code, out, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(seeds), "--length", "800")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "id,site,bloomfilter"  # the identifying data stay out of the output
    assert lines[1] == f"r1,mainz,{MUSTERMANN_FILTER}"
    assert lines[2].startswith("r2,kiel,") and len(lines) == 3
    assert "encoded 2 record(s) into 1600-bit filters" in err
    assert "Mustermann" not in out + err


def test_length_from_the_file_or_the_option(capsys, tmp_path: Path) -> None:
    properties = tmp_path / "library.toml"
    properties.write_text(PUBLISHED_PROPERTIES_TOML)  # length 800 and the transformers
    code, out, _ = encode(capsys, tmp_path, RECORDS, "--seeds", str(properties))
    assert code == 0 and out.splitlines()[1] == f"r1,mainz,{MUSTERMANN_FILTER}"
    code, out, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(properties), "--length", "900")
    assert code == 0 and "1800-bit" in err
    for line in out.splitlines()[1:]:
        data = bloom.decode_filter(line.rsplit(",", 1)[1], 1800)
        assert bloom.popcount(data) == 900


def test_json_seeds_stdin_stdout_and_another_delimiter(capsys, monkeypatch, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps({"length": 800, "vocabulary": PUBLISHED_VOCABULARY,
                                 "balanced": {"seed": BALANCED_SEED},
                                 "field": {name: {"seed": seed} for name, seed in SEEDS.items()}}))
    text = "\ufeffgender;birthDate;lastName;firstName\r\nm;19200101;Mustermann;Herr\r\n"  # Excel's BOM and CRLF
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))
    code = main(["bloomfilter", "encode", "--seeds", str(seeds), "--delimiter", ";"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"bloomfilter\n{MUSTERMANN_FILTER}\n"


def test_output_file_and_vocabulary_warning(capsys, tmp_path: Path, seeds: Path) -> None:
    target = tmp_path / "out.csv"
    text = "id,birthDate\n1,1920-01-01\n2,19200101\n"
    code, out, err = encode(capsys, tmp_path, text, "--seeds", str(seeds), "--length", "800",
                            "--output", str(target))
    assert code == 0 and out == ""
    assert [line.split(",")[0] for line in target.read_text().splitlines()] == ["id", "1", "2"]
    assert "1 record(s) have characters outside the vocabulary in birthDate" in err
    assert "1920" not in err


def test_the_installed_command(tmp_path: Path, seeds: Path) -> None:
    command = Path(sys.executable).parent / "ttp-gateway"
    done = subprocess.run([str(command), "bloomfilter", "encode", "--seeds", str(seeds), "--length", "800"],
                          input=RECORDS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"r1,mainz,{MUSTERMANN_FILTER}"


BAD_INPUTS = [
    ("id,firstName,lastName\nr1,Herr,Mustermann\nr2,Erika,Mustermann,Gabler\n", "line 3: 4 cells"),
    ("id,city\nr1,Mainz\n", "names no field with a seed"),
    ("", "no header"),
    ("id,lastName,lastName\nr1,Mustermann,Gabler\n", "column(s) twice: lastName"),
    ("id,lastName,bloomfilter\nr1,Mustermann,AAAA\n", "'bloomfilter' column already"),
    ("id,lastName\nr1,\"Muster\"mann\n", "line 2: not valid CSV"),
    ("id,lastName\nr1,M\xfcstermann\n".encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS)
def test_bad_input_is_a_clear_error_without_values(capsys, tmp_path: Path, seeds: Path, text, message: str) -> None:
    target = tmp_path / "out.csv"
    code, out, err = encode(capsys, tmp_path, text, "--seeds", str(seeds), "--output", str(target))
    assert code == 1
    assert err.startswith("error: ") and message in err
    for value in ("Herr", "Mustermann", "Erika", "Gabler", "Mainz", "AAAA", "stermann"):
        assert value not in err
    assert not target.exists() and list(tmp_path.glob(".bloomfilter-*")) == []


BAD_SEEDS = [
    ("seeds.toml", "balanced.seed = 1\nfield.lastName.seed = 12x\n", "not valid TOML"),
    ("seeds.json", '{"field": {"lastName": {"seed": 1}}', "not valid JSON"),
    ("seeds.json", "[1, 2]", "no table of settings"),
    ("seeds.toml", "balanced.seed = 1\n", "no field has a seed"),
    ("seeds.toml", 'field.lastName.seed = "secret"\n', "seed of field lastName must be an integer"),
    ("seeds.toml", "field.lastName.seed = 1\nlenght = 800\n", "unknown setting 'lenght'"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_SEEDS)
def test_bad_seeds_file(capsys, tmp_path: Path, name: str, content: str, message: str) -> None:
    seeds = tmp_path / name
    seeds.write_text(content)
    code, _, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(seeds))
    assert code == 1 and message in err
    assert "secret" not in err and "12x" not in err


def test_missing_files_and_bad_options(capsys, tmp_path: Path, seeds: Path) -> None:
    code, _, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(tmp_path / "none.toml"))
    assert code == 1 and "cannot read the seeds file" in err
    code = main(["bloomfilter", "encode", "--seeds", str(seeds), "--input", str(tmp_path / "none.csv")])
    assert code == 1 and "cannot read the input" in capsys.readouterr().err
    code, _, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(seeds), "--length", "0")
    assert code == 1 and "length must be a positive integer" in err
    code, _, err = encode(capsys, tmp_path, RECORDS, "--seeds", str(seeds), "--delimiter", ";;")
    assert code == 1 and "delimiter" in err
