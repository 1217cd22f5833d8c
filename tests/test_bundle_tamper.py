"""Damaged, inconsistent and tampered bundles are refused at load, saying which and what to do; optional
HMAC signing (LINEWATCH_BUNDLE_KEY). The cases are bench/robustness.py's, so its table is what is tested."""
import hashlib
import hmac
import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_inputs import load_robustness

from linewatch.runtime.bundle import Bundle, BundleError, write_bundle
from linewatch.runtime.signing import (KEY_ENV, NOT_CHECKED, SIGNATURE_NAME, UNSIGNED, VERIFIED, SigningError,
                                       key_from_env, sign_bundle)
from test_bundle import tiny_manifest

rb = load_robustness()
CASES = rb.bundle_cases([])          # the cases that do not depend on the bundle's file list


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_cases_for_each_listed_file(small_bundle, tmp_path):
    files = sorted(Bundle.load(small_bundle).manifest.files)
    assert "model.onnx" in files
    extra = [c for c in rb.bundle_cases(files) if c.name not in {k.name for k in CASES}]
    assert len([c for c in extra if c.name.startswith("one byte flipped in")]) == len(files)
    for case in extra:               # the flips, and any case for a file only some bundles have (density.bin)
        out = rb.try_bundle_case(case, small_bundle, tmp_path)
        if case.expect == "refused":
            assert out.refused and all(w in out.message for w in case.words), (case.name, out.message)
        else:
            assert not out.refused and out.message == case.signature, (case.name, out.message)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bundle_case(case, small_bundle, tmp_path):
    out = rb.try_bundle_case(case, small_bundle, tmp_path)
    if case.expect == "refused":
        assert out.refused, f"loaded: {out.message}"
        for w in case.words:
            assert w in out.message, (w, out.message)
    else:
        assert not out.refused, out.message
        assert out.message == case.signature


def test_bundle_table_shows_each_case(small_bundle, tmp_path):
    outcomes = [rb.try_bundle_case(c, small_bundle, tmp_path) for c in CASES[:3]]
    table = rb.bundle_table(outcomes, str(tmp_path / "bundle"))
    assert all(c.name in table for c in CASES[:3]) and str(tmp_path) not in table


@settings(max_examples=60, deadline=None, database=None)
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255), which=st.sampled_from(["manifest.json",
                                                                                                  "model.onnx"]))
def test_any_changed_byte_in_any_file_is_refused(tmp_path_factory, where, xor, which):
    root = tmp_path_factory.mktemp("b") / "b"
    write_bundle(root, tiny_manifest(), {"model.onnx": b"\x00graph bytes"})
    f = root / which
    data = bytearray(f.read_bytes())
    data[int(where * len(data))] ^= xor
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        Bundle.load(root)


KEY = "hex:" + "11" * 32


def test_write_bundle_signs_when_the_key_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    b = write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"\x00graph"})
    assert b.signature == VERIFIED
    want = hmac.new(bytes.fromhex("11" * 32), (tmp_path / "b" / "manifest.json").read_bytes(), hashlib.sha256)
    assert (tmp_path / "b" / SIGNATURE_NAME).read_text() == want.hexdigest() + "\n"
    monkeypatch.delenv(KEY_ENV)
    assert Bundle.load(tmp_path / "b").signature == NOT_CHECKED
    assert write_bundle(tmp_path / "c", tiny_manifest(), {"model.onnx": b"x"}).signature == UNSIGNED
    assert not (tmp_path / "c" / SIGNATURE_NAME).exists()


def test_a_bad_key_stops_the_writer_too(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "too short")
    with pytest.raises(BundleError, match="fewer than 16"):
        write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"x"})
    assert not (tmp_path / "b").exists()


def test_key_forms():
    assert key_from_env({}) is None
    assert key_from_env({KEY_ENV: "hex:" + "ab" * 16}) == b"\xab" * 16
    assert key_from_env({KEY_ENV: "a passphrase of some length"}) == b"a passphrase of some length"
    for bad in ("", "hex:abc", "hex:" + "ab" * 15, "x" * 15):
        with pytest.raises(SigningError):
            key_from_env({KEY_ENV: bad})


def test_sign_an_existing_bundle_and_refuse_to_sign_a_damaged_one(small_bundle, tmp_path, monkeypatch):
    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    with pytest.raises(SigningError, match="no signing key"):
        sign_bundle(copy)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(BundleError, match="not signed"):
        Bundle.load(copy)
    sign_bundle(copy)
    assert Bundle.load(copy).signature == VERIFIED
    (copy / SIGNATURE_NAME).unlink()
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="checksum mismatch"):
        sign_bundle(copy)
    assert not (copy / SIGNATURE_NAME).exists()


def test_cli_sign_and_check(small_bundle, tmp_path, monkeypatch, capsys):
    from linewatch.cli import main

    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    assert main(["sign", "--bundle", str(copy)]) == 1
    assert "no signing key" in capsys.readouterr().err
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main(["sign", "--bundle", str(copy)]) == 0
    capsys.readouterr()
    assert main(["sign", "--check", "--bundle", str(copy)]) == 0
    assert json.loads(capsys.readouterr().out)["signature"] == VERIFIED
    monkeypatch.setenv(KEY_ENV, "hex:" + "22" * 32)
    assert main(["sign", "--check", "--bundle", str(copy)]) == 1
    assert "signature does not match" in capsys.readouterr().err
    assert main(["inspect", "--bundle", str(copy), "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "signature does not match" in capsys.readouterr().err


def test_bundles_without_manifest_digest_still_load(tmp_path):
    write_bundle(tmp_path / "b", tiny_manifest(), {"model.onnx": b"\x00graph"})
    (tmp_path / "b" / "manifest.sha256").unlink()                     # as written before the digest existed
    assert Bundle.load(tmp_path / "b").manifest.files["model.onnx"]["bytes"] == 6

