"""The collector side of the security contract: bearer token from ROLLGATE_TOKEN, TLS and mutual TLS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rollgate.collector import collect_main
from tests.collector.conftest import read_jsonl, task, write_tasks
from tests.collector.fake_gateway import FakeGateway
from tests.conftest import require_tool


def _argv(gw: FakeGateway, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["+agent_name=my_agent", f"+input_jsonl_fpath={inp}", f"+output_jsonl_fpath={out}",
            f"+gateway={gw.address}", *extra]


def test_token_is_sent_as_bearer_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(4)])
    monkeypatch.setenv("ROLLGATE_TOKEN", "s3cret-token")
    with FakeGateway(token="s3cret-token") as gw:
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl", "+num_repeats=2")) == 0
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 8
    assert "s3cret" not in (tmp_path / "o.jsonl.manifest.json").read_text()  # no secret in the manifest


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], token: str | None) -> None:
    inp = write_tasks(tmp_path / "t.jsonl", [task(0)])
    if token is None:
        monkeypatch.delenv("ROLLGATE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("ROLLGATE_TOKEN", token)
    with FakeGateway(token="right") as gw:
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl")) == 2
        assert gw.received == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "refused" in err[-1] and "ROLLGATE_TOKEN" in err[-1]  # "Found 1 rows!" + the error
    assert not (tmp_path / "o.jsonl").exists()


def _make_certs(tmp: Path) -> dict[str, Path]:
    openssl = require_tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (tmp / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(tmp_path: Path, mutual: bool, capsys: pytest.CaptureFixture[str]) -> None:
    certs = _make_certs(tmp_path)
    inp = write_tasks(tmp_path / "t.jsonl", [task(i) for i in range(3)])
    gw = FakeGateway()
    gw.tls = (certs["server.pem"].read_bytes(), certs["server.key"].read_bytes(),
              certs["ca.pem"].read_bytes() if mutual else None)
    with gw:
        tls = [f"+tls_ca={certs['ca.pem']}"]
        if mutual:
            # Without a client certificate the gateway refuses the handshake: nothing runs, one error line.
            assert collect_main(_argv(gw, inp, tmp_path / "no_cert.jsonl", *tls)) != 0
            assert not (tmp_path / "no_cert.jsonl").exists()
            tls += [f"+tls_cert={certs['client.pem']}", f"+tls_key={certs['client.key']}"]
        # Plaintext against a TLS port fails cleanly too.
        assert collect_main(_argv(gw, inp, tmp_path / "plain.jsonl")) == 1
        assert collect_main(_argv(gw, inp, tmp_path / "o.jsonl", *tls)) == 0
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 3
    assert "cannot reach the gateway" in capsys.readouterr().err


def test_tls_cert_without_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = collect_main(["+agent_name=a", "+input_jsonl_fpath=x", "+output_jsonl_fpath=y", "+tls_cert=c.pem"])
    assert status == 2
    assert "tls_cert and tls_key go together" in capsys.readouterr().err
