"""WeCom's callback crypto (the WXBizMsgCrypt scheme), shared by the AI bot channel and its emulator.

From the published spec (developer.work.weixin.qq.com, "回调和回复的加解密方案"):

- AESKey = base64decode(EncodingAESKey + "="): the EncodingAESKey is 43 characters of a-z, A-Z, 0-9
  and decodes to 32 bytes; AES-256-CBC with IV = AESKey[:16].
- plaintext = 16 random bytes + the message length (4 bytes, big-endian) + message + ReceiveId,
  PKCS#7-padded to a multiple of 32 bytes; the ciphertext travels base64-encoded. The AI bot's
  ReceiveId is the empty string.
- signature = sha1 of the sorted concatenation of token, timestamp, nonce and the ciphertext (hex).

AES and the padding come from ``cryptography``; nothing here is hand-rolled beyond the framing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import struct
import time
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BITS = 256  # WeCom pads to 32 bytes, not to AES's 16
_AES_KEY = re.compile(r"^[A-Za-z0-9]{43}$")
_TOKEN = re.compile(r"^[A-Za-z0-9]{1,32}$")


class WeComCryptoError(ValueError):
    """A callback that cannot be trusted or read: bad signature, bad ciphertext, wrong receiver."""


class SignatureError(WeComCryptoError):
    """The msg_signature does not match: not from WeCom, or signed with another token."""


def check_token(token: str) -> str:
    """The callback Token: 1-32 letters and digits (WeCom's rule); ValueError otherwise."""
    if not _TOKEN.match(token):
        raise ValueError("the Token is 1-32 letters and digits (copy it from the bot's API settings)")
    return token


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey; ValueError naming what is wrong."""
    if len(encoding_aes_key) != 43:
        raise ValueError(f"the EncodingAESKey must be 43 characters, got {len(encoding_aes_key)}")
    if not _AES_KEY.match(encoding_aes_key):
        raise ValueError("the EncodingAESKey may hold only the letters a-z, A-Z and the digits 0-9")
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:  # cannot happen for 43 base64 characters; kept as a guard
        raise ValueError("the EncodingAESKey does not decode to 32 bytes")
    return key


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """WeCom's msg_signature: sha1 over the four strings sorted and joined, as hex."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


class WeComCrypto:
    """Sign, verify, encrypt and decrypt WeCom callbacks and replies for one Token + EncodingAESKey."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str = "") -> None:
        self.token = check_token(token)
        self._key = decode_aes_key(encoding_aes_key)
        self.receive_id = receive_id.encode()

    # -- signatures ----------------------------------------------------------------------------
    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return sign(self.token, timestamp, nonce, encrypt)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), msg_signature.encode("utf-8", "replace")):
            raise SignatureError("msg_signature does not match")

    # -- ciphertext ----------------------------------------------------------------------------
    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, message: bytes, *, random_prefix: bytes | None = None) -> str:
        """Base64 ciphertext of ``message`` (16 random bytes, length, message, ReceiveId)."""
        prefix = random_prefix if random_prefix is not None else os.urandom(16)
        if len(prefix) != 16:
            raise ValueError("the random prefix is 16 bytes")
        plain = prefix + struct.pack(">I", len(message)) + message + self.receive_id
        padder = padding.PKCS7(BLOCK_BITS).padder()
        padded = padder.update(plain) + padder.finalize()
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside ``encrypt``; WeComCryptoError when it is not ours or is damaged."""
        try:
            data = base64.b64decode(encrypt, validate=True)
            decryptor = self._cipher().decryptor()
            padded = decryptor.update(data) + decryptor.finalize()
            unpadder = padding.PKCS7(BLOCK_BITS).unpadder()
            plain = unpadder.update(padded) + unpadder.finalize()
        except (binascii.Error, ValueError) as exc:
            raise WeComCryptoError(f"cannot decrypt ({type(exc).__name__})") from None
        if len(plain) < 20:
            raise WeComCryptoError("cannot decrypt (plaintext too short)")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise WeComCryptoError("cannot decrypt (length field out of range)")
        if plain[20 + length :] != self.receive_id:
            raise WeComCryptoError("the ReceiveId does not match (a message for another receiver)")
        return plain[20 : 20 + length]

    # -- the three operations of WXBizMsgCrypt -------------------------------------------------
    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> bytes:
        """URL verification: check the signature over ``echostr`` and return its plaintext."""
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_callback(self, msg_signature: str, timestamp: str, nonce: str, body: bytes) -> bytes:
        """The plaintext of a callback POST whose JSON body is ``{"encrypt": ...}``."""
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise WeComCryptoError("the body is not JSON") from None
        encrypt = envelope.get("encrypt") if isinstance(envelope, dict) else None
        if not isinstance(encrypt, str) or not encrypt:
            raise WeComCryptoError("the body has no 'encrypt' field")
        self.verify(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def encrypt_reply(self, message: bytes, nonce: str, timestamp: int | None = None) -> dict[str, Any]:
        """A passive reply: ``{"encrypt", "msgsignature", "timestamp", "nonce"}`` (note the key
        ``msgsignature``; ``nonce`` is the callback URL's, ``timestamp`` in seconds)."""
        stamp = int(time.time()) if timestamp is None else timestamp
        encrypt = self.encrypt(message)
        return {
            "encrypt": encrypt,
            "msgsignature": self.signature(str(stamp), nonce, encrypt),
            "timestamp": stamp,
            "nonce": nonce,
        }


__all__ = [
    "SignatureError",
    "WeComCrypto",
    "WeComCryptoError",
    "check_token",
    "decode_aes_key",
    "sign",
]
