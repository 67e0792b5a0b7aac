"""Building, signing and numbering events, with no server."""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from atp_producer import AuditEvent, BuildError, Producer, Reason, Rejected, Sequencer, Signer, Source, verify
from atp_producer._dsse import normalise_time
from atp_producer._http import refusal


def producer(sequencer: Sequencer | None = None) -> Producer:
    key = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
    return Producer(Source("acme", "crm", "https://crm.acme.example"), Signer(key, "crm-1"), sequencer)


def event(**kw: object) -> AuditEvent:
    fields: dict = dict(type="com.acme.contact.updated", actor_id="user-42", action="UPDATE",
                        resource_type="Contact", resource_id="c-1")
    fields.update(kw)
    return AuditEvent(**fields)


class Building(unittest.TestCase):
    def test_a_signed_event_has_fixed_bytes_and_an_idempotency_key(self) -> None:
        signed = producer().sign(event(id="e-1"))
        self.assertEqual(signed.idempotency_key, "acme:crm:e-1")
        self.assertEqual(signed.event["source"], "https://crm.acme.example")
        self.assertTrue(signed.event["time"].endswith("Z"))
        self.assertEqual(signed.to_cloudevent().get_id(), "e-1")
        p = producer()
        self.assertEqual(verify(signed.event, {"crm-1": p.signer.key.public_key()}), "crm-1")

    def test_incomplete_nested_or_misnamed_events_are_refused_before_sending(self) -> None:
        for bad in (event(actor_id=""), event(action=""), event(resource_id=""),
                    event(attributes={"nested": {"a": 1}}), event(id=""), event(id="x" * 129),
                    event(attributes={"huge": 2**60})):
            with self.subTest(bad), self.assertRaises(BuildError):
                producer().sign(bad)
        for tenant, source in (("ACME", "crm"), ("acme", "crm.x"), ("", "crm")):
            with self.subTest((tenant, source)), self.assertRaises(BuildError):
                Source(tenant, source, "u")

    def test_a_pem_key_from_openssl_or_atp_loads(self) -> None:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self.assertEqual(Signer.from_pem(pem, "k").key_id, "k")

    def test_times_normalise_as_the_contract_hashes_them(self) -> None:
        self.assertEqual(normalise_time("2020-06-18T19:24:53+02:00"), "2020-06-18T17:24:53Z")
        self.assertEqual(normalise_time("2020-06-18T17:24:53.100Z"), "2020-06-18T17:24:53.100Z")
        self.assertEqual(normalise_time("2020-06-18T17:24:53.000Z"), "2020-06-18T17:24:53Z")
        self.assertEqual(normalise_time("2020-06-18T17:24:53.1234Z"), "2020-06-18T17:24:53.123400Z")
        self.assertEqual(normalise_time("2020-06-18T17:24:53.123456789Z"), "2020-06-18T17:24:53.123456789Z")

    def test_problem_codes_that_are_reasons_are_typed_rejections(self) -> None:
        for reason in Reason:
            err = refusal(400, {"code": reason.value, "detail": "d"})
            self.assertIsInstance(err, Rejected)
            assert isinstance(err, Rejected)
            self.assertEqual(err.reason, reason)
        self.assertNotIsInstance(refusal(403, {"code": "FORBIDDEN"}), Rejected)


class Numbering(unittest.TestCase):
    def test_a_sequencer_numbers_events_and_the_number_is_signed(self) -> None:
        p = producer(Sequencer.starting_after(9))
        a, b = p.sign(event()), p.sign(event())
        self.assertEqual((a.sequence, b.sequence), (10, 11))
        self.assertEqual(a.event["sequence"], "10")
        self.assertEqual(a.event["signedextattrs"], "sequence")
        self.assertEqual(p.sign(event(sequence=3)).sequence, 3)

    def test_with_a_file_a_restart_goes_on_above_every_number_handed_out(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "crm.seq"
            first = Sequencer.file(path)
            handed = [first.next() for _ in range(1030)]
            self.assertEqual(handed[:3], [1, 2, 3])
            again = Sequencer.file(path)
            self.assertGreater(again.next(), handed[-1])
            path.write_text("not a number")
            with self.assertRaises(BuildError):
                Sequencer.file(path)


if __name__ == "__main__":
    unittest.main()
