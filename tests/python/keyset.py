"""An independent implementation of the hub's key set (docs/protocol.md §3, "The hub's key
set"), from the document alone, on pyca/cryptography: used by tests/tests/keyset_interop.rs
to check that a device written in another language learns what the hub publishes, and that
the Rust code learns from an endorsement made here.

Usage:
  keyset.py learn    <hub id> <trusted public x, base64url>...   (message JSON on stdin)
      prints {"current": <kid>, "keys": [<kid>...], "endorsed_by": <kid>} or fails
  keyset.py endorse  <hub id> <iat> <endorsing seed, base64url> <public x, base64url>...
      prints a key set message endorsed by the seed's key, listing the given keys in order
  keyset.py kid      <public x, base64url>
      prints the key's RFC 7638 thumbprint

What a device then does with the keys (newest set only, current key for messages) is the
device's state, checked by the Rust tests; this client checks the wire format. It does not
refuse small-order keys (pyca/cryptography has no such check); the hub never lists one.
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TYP = "qrcash-keyset+jws"
MAX_BYTES = 16 * 1024
MAX_KEYS = 8
MAX_ENDORSEMENTS = 8


def b64d(s: str) -> bytes:
    if "=" in s or not s.replace("-", "").replace("_", "").isalnum():
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64e(raw) != s:
        raise ValueError("not canonical base64url")
    return raw


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def kid(x: str) -> str:
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64e(hashlib.sha256(canonical.encode()).digest())


def strict_object(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate member")
    return dict(pairs)


def check_jwk(jwk) -> str:
    if set(jwk) - {"kty", "crv", "x", "kid"} or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"not an Ed25519 JWK: {jwk}")
    x = jwk["x"]
    if len(b64d(x)) != 32:
        raise ValueError("x is not 32 bytes")
    k = kid(x)
    if "kid" in jwk and jwk["kid"] != k:
        raise ValueError("kid is not the thumbprint")
    return k


def learn(hub_id: str, trusted_x: list, message: bytes) -> dict:
    if len(message) > MAX_BYTES:
        raise ValueError("too large")
    msg = json.loads(message, object_pairs_hook=strict_object)
    if set(msg) != {"endorsements"} or not 1 <= len(msg["endorsements"]) <= MAX_ENDORSEMENTS:
        raise ValueError("malformed message")
    trusted = {kid(x): x for x in trusted_x}
    for jws in msg["endorsements"]:
        # Only an endorsement by a trusted key is read; any other is skipped unread.
        try:
            endorser = json.loads(b64d(jws.split(".")[0])).get("kid")
        except (ValueError, AttributeError):
            endorser = None
        if endorser not in trusted:
            continue
        h, p, s = jws.split(".")
        header = json.loads(b64d(h), object_pairs_hook=strict_object)
        if header != {"alg": "EdDSA", "kid": endorser, "typ": TYP}:
            raise ValueError(f"bad header {header}")
        Ed25519PublicKey.from_public_bytes(b64d(trusted[endorser])).verify(
            b64d(s), f"{h}.{p}".encode()
        )
        body = json.loads(b64d(p), object_pairs_hook=strict_object)
        if set(body) != {"iss", "iat", "keys"} or body["iss"] != hub_id:
            raise ValueError(f"bad key set {body}")
        if not 1 <= len(body["keys"]) <= MAX_KEYS:
            raise ValueError("bad number of keys")
        kids = [check_jwk(k) for k in body["keys"]]
        return {"current": kids[0], "keys": kids, "endorsed_by": endorser}
    raise ValueError("no endorsement by a trusted key")


def endorse(hub_id: str, iat: int, seed: str, xs: list) -> str:
    key = Ed25519PrivateKey.from_private_bytes(b64d(seed))
    x = b64e(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    header = {"alg": "EdDSA", "kid": kid(x), "typ": TYP}
    body = {
        "iss": hub_id,
        "iat": iat,
        "keys": [{"kty": "OKP", "crv": "Ed25519", "x": k, "kid": kid(k)} for k in xs],
    }
    h = b64e(json.dumps(header).encode())
    p = b64e(json.dumps(body).encode())
    s = b64e(key.sign(f"{h}.{p}".encode()))
    return json.dumps({"endorsements": [f"{h}.{p}.{s}"]})


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "learn":
        print(json.dumps(learn(args[0], args[1:], sys.stdin.buffer.read())))
    elif cmd == "endorse":
        print(endorse(args[0], int(args[1]), args[2], args[3:]))
    elif cmd == "kid":
        print(kid(args[0]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
