"""The cross-language vectors (tests/vectors/producer): this SDK must sign each input into the
exact bytes the Rust SDK does, and verify what it signed; plus the CloudEvents verifiability
draft's case 5 (binary data), reproduced."""

from __future__ import annotations

import base64
import json
import unittest
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atp_producer import AuditEvent, Producer, SignatureError, Signer, Source, verification_material, verify

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "vectors" / "producer"


def sign(v: dict) -> tuple[dict, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed"]))
    producer = Producer(Source(v["tenant"], v["source"], v["sourceUri"]), Signer(key, v["keyId"]))
    e = v["event"]
    signed = producer.sign(
        AuditEvent(
            type=e["type"],
            id=e["id"],
            time=datetime.fromisoformat(e["time"].replace("Z", "+00:00")),
            actor_id=e["actor"]["id"],
            actor_type=e["actor"]["type"],
            action=e["action"],
            resource_type=e["resource"]["type"],
            resource_id=e["resource"]["id"],
            outcome=e.get("outcome"),
            subject=e.get("subject"),
            sequence=int(e["sequence"]) if "sequence" in e else None,
            attributes=e["attributes"],
        )
    )
    return signed.event, key


class Vectors(unittest.TestCase):
    def setUp(self) -> None:
        self.inputs = json.loads((VECTORS / "inputs.json").read_text())
        self.expected = {v["name"]: v for v in json.loads((VECTORS / "expected.json").read_text())}

    def test_every_input_signs_into_the_bytes_the_rust_sdk_signs(self) -> None:
        import rfc8785

        self.assertGreaterEqual(len(self.inputs), 3)
        for v in self.inputs:
            with self.subTest(v["name"]):
                want = self.expected[v["name"]]
                event, _ = sign(v)
                self.assertEqual(rfc8785.dumps(event["data"]).decode(), want["canonicalData"])
                self.assertEqual(verification_material(event).hex(), want["material"])
                self.assertEqual(event["dssematerial"], want["dssematerial"])
                self.assertEqual(event, want["event"])

    def test_what_is_signed_verifies_and_a_changed_byte_does_not(self) -> None:
        for v in self.inputs:
            with self.subTest(v["name"]):
                event, key = sign(v)
                keys = {v["keyId"]: key.public_key()}
                self.assertEqual(verify(self.expected[v["name"]]["event"], keys), v["keyId"])
                tampered = json.loads(json.dumps(event))
                tampered["data"]["action"] = "DELETE"
                with self.assertRaises(SignatureError):
                    verify(tampered, keys)
                other = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
                with self.assertRaises(SignatureError):
                    verify(event, {v["keyId"]: other})

    def test_case_5_binary_data_reproduces_the_drafts_payload(self) -> None:
        # cloudevents/spec extensions/verifiability.md, test case 5: binary data.
        vector = json.loads(base64.b64decode(
            "eyJwYXlsb2FkVHlwZSI6Imh0dHBzOi8vY2xvdWRldmVudHMuaW8vdmVyaWZpYWJpbGl0eS9kc3NlL3YwLjEiLCJwYXls"
            "b2FkIjoicUNTZWlaa1MraEg5V2lDbGZxNnBsZnFZTlZ5Mmt2eFdSZm9CckxFem9Eaz0iLCJzaWduYXR1cmVzIjpbeyJr"
            "ZXlpZCI6InRlc3RrZXkiLCJzaWciOiJEWXdiU3V4SDRXcWFhQlZPVlU4TllJYTZXYnZDazkvdkc5aGV0d3BKNHpJNWo2"
            "am1BTGRNaHcrcVZuc211YzY2NWZqVlJGVDFRUHUvanA1Z0c0U2pzUT09In1dfQ=="
        ))
        event = {
            "specversion": "1.0",
            "id": "1",
            "source": "example/uri",
            "type": "example.type.binary",
            "datacontenttype": "application/octet-stream",
            "data_base64": "8J+koQ==",
        }
        self.assertEqual(verification_material(event), base64.b64decode(vector["payload"]))


if __name__ == "__main__":
    unittest.main()
