"""An independent ATM board enrolling by one-time code (docs/protocol.md §6.6), written from
the document alone on pyca/cryptography and the standard library's hmac: used by
tests/tests/enrol_interop.rs against the real hub.

Usage:
  enrol.py request <atm id> <hub id> <code> <seq> <iat>
      prints {"jws": <Enrol message>, "jti", "nonce", "kid", "seed"}: a fresh key, signed by it
  enrol.py answer <atm id> <code> <kid> <nonce> <jti>     (the hub's answer JWS on stdin)
      prints {"hub_id", "hub_keys": [<kid>...], "broker_urls", "denominations"} or fails
      (a refusal prints {"refused": <code>, "message"} and exits 3)
  enrol.py sign <atm id> <hub id> <seed> <seq> <iat>      (the message object on stdin)
      prints a message signed with the seed's key (to show the hub now knows it)
"""

import base64
import hashlib
import hmac
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TYP = "qrcash.v1+jws"
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64d(s: str) -> bytes:
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64e(raw) != s:
        raise ValueError("not canonical base64url")
    return raw


def kid(x: str) -> str:
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return b64e(hashlib.sha256(canonical.encode()).digest())


def canonical_code(text: str) -> str:
    code = "".join(c for c in text if c not in "- ").upper()
    if len(code) != 16 or any(c not in BASE32 for c in code):
        raise ValueError("not an enrolment code")
    return code


def proof_key(code: str) -> bytes:
    return hashlib.sha256(b"qrcash-enrol-v1\0" + canonical_code(code).encode()).digest()


def mac(key: bytes, parts: list) -> str:
    return b64e(hmac.new(key, b"\0".join(p.encode() for p in parts), hashlib.sha256).digest())


def public_x(key: Ed25519PrivateKey) -> str:
    return b64e(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign(key: Ed25519PrivateKey, claims: dict) -> str:
    header = {"alg": "EdDSA", "kid": kid(public_x(key)), "typ": TYP}
    signing_input = b64e(json.dumps(header).encode()) + "." + b64e(json.dumps(claims).encode())
    return signing_input + "." + b64e(key.sign(signing_input.encode()))


def claims(atm: str, hub: str, seq: int, iat: int, msg: dict) -> dict:
    return {
        "iss": atm,
        "aud": hub,
        "iat": iat,
        "exp": iat + 300,
        "jti": b64e(os.urandom(16)),
        "seq": seq,
        "msg": msg,
    }


def request(atm: str, hub: str, code: str, seq: int, iat: int) -> dict:
    seed = os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    x = public_x(key)
    nonce = b64e(os.urandom(16))
    proof = mac(proof_key(code), ["qrcash-enrol-v1 request", atm, kid(x), nonce])
    msg = {
        "type": "Enrol",
        "public_key": {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid(x)},
        "nonce": nonce,
        "proof": proof,
    }
    c = claims(atm, hub, seq, iat, msg)
    return {"jws": sign(key, c), "jti": c["jti"], "nonce": nonce, "kid": kid(x), "seed": b64e(seed)}


def answer(atm: str, code: str, my_kid: str, nonce: str, jti: str, jws: str) -> dict:
    h, c, s = jws.strip().split(".")
    header = json.loads(b64d(h))
    if set(header) != {"alg", "kid", "typ"} or header["alg"] != "EdDSA" or header["typ"] != TYP:
        raise ValueError(f"bad header {header}")
    body = json.loads(b64d(c))
    if body.get("re") != jti or body.get("aud") != atm:
        raise ValueError("not an answer to this request")
    msg = body["msg"]
    if msg["type"] == "Rejected":
        print(json.dumps({"refused": msg["reason"]["code"], "message": msg["message"]}))
        sys.exit(3)
    if msg["type"] != "Enrolled":
        raise ValueError(f"unexpected {msg['type']}")
    keys = []
    for jwk in msg["hub_keys"]:
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or len(b64d(jwk["x"])) != 32:
            raise ValueError("a listed key is not an Ed25519 public key")
        keys.append(jwk["x"])
    kids = [kid(x) for x in keys]
    expected = mac(
        proof_key(code), ["qrcash-enrol-v1 answer", atm, my_kid, nonce, ",".join(kids)]
    )
    if not hmac.compare_digest(expected, msg["proof"]):
        raise ValueError("the answer proof does not match the code")
    if header["kid"] != kids[0]:
        raise ValueError("not signed by the first listed key")
    Ed25519PublicKey.from_public_bytes(b64d(keys[0])).verify(
        b64d(s), (h + "." + c).encode()
    )
    return {
        "hub_id": body["iss"],
        "hub_keys": kids,
        "broker_urls": msg["broker_urls"],
        "denominations": msg["denominations"],
    }


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "request":
        atm, hub, code, seq, iat = args
        print(json.dumps(request(atm, hub, code, int(seq), int(iat))))
    elif cmd == "answer":
        atm, code, my_kid, nonce, jti = args
        print(json.dumps(answer(atm, code, my_kid, nonce, jti, sys.stdin.read())))
    elif cmd == "sign":
        atm, hub, seed, seq, iat = args
        key = Ed25519PrivateKey.from_private_bytes(b64d(seed))
        print(sign(key, claims(atm, hub, int(seq), int(iat), json.loads(sys.stdin.read()))))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
