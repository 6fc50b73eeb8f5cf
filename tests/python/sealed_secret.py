"""An independent implementation of qrcash's sealed secrets (docs/protocol.md §6.5), from the
document alone, on pyhpke (RFC 9180) and pyca/cryptography: used by
tests/tests/sealed_secret_interop.rs to check that what Python seals the hub opens and what
the Rust code seals Python opens.

Usage:
  sealed_secret.py seal  <hub ed25519 public x, base64url> <hub kid> <field> <iss> <kid> <secret>
      prints the sealed secret as JSON
  sealed_secret.py open  <hub ed25519 seed, base64url> <field> <iss> <kid> <sealed JSON>
      prints the secret
  sealed_secret.py x25519 <hub ed25519 public x, base64url>
      prints the hub key's X25519 form, base64url
"""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

INFO = b"qrcash/v1 sealed secret"
P = 2**255 - 19
SUITE = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305
)


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def montgomery(ed_public: bytes) -> bytes:
    """RFC 7748 §4.1: u = (1 + y) / (1 - y) mod p, y from the Edwards encoding."""
    y = int.from_bytes(ed_public, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    return u.to_bytes(32, "little")


def x25519_private(seed: bytes) -> bytes:
    return hashlib.sha512(seed).digest()[:32]


def aad(field: str, iss: str, kid: str) -> bytes:
    return field.encode() + b"\0" + iss.encode() + b"\0" + kid.encode()


def seal(hub_x: str, hub_kid: str, field: str, iss: str, kid: str, secret: str) -> str:
    pk = KEMKey.from_pyca_cryptography_key(
        X25519PublicKey.from_public_bytes(montgomery(b64d(hub_x)))
    )
    enc, sender = SUITE.create_sender_context(pk, info=INFO)
    ct = sender.seal(secret.encode(), aad=aad(field, iss, kid))
    return json.dumps({"kid": hub_kid, "enc": b64e(enc), "ct": b64e(ct)})


def open_(seed: str, field: str, iss: str, kid: str, sealed: str) -> str:
    s = json.loads(sealed)
    sk = KEMKey.from_pyca_cryptography_key(
        X25519PrivateKey.from_private_bytes(x25519_private(b64d(seed)))
    )
    recipient = SUITE.create_recipient_context(b64d(s["enc"]), sk, info=INFO)
    return recipient.open(b64d(s["ct"]), aad=aad(field, iss, kid)).decode()


def main() -> None:
    cmd, *args = sys.argv[1:]
    if cmd == "seal":
        print(seal(*args))
    elif cmd == "open":
        print(open_(*args))
    elif cmd == "x25519":
        print(b64e(montgomery(b64d(args[0]))))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
