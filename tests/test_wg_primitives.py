"""Keys, TAI64N, message formats, Noise_IKpsk2 and cookies: known answers and round trips."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.wireguard import cookie, messages, noise
from dataplane.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
)
from dataplane.wireguard.keys import KeyError_, PresharedKey, PrivateKey, PublicKey
from dataplane.wireguard.tai64n import TAI64N_BASE, TAI64NClock, tai64n, unpack

# --- keys ------------------------------------------------------------------------------------


def test_private_key_text_form_round_trips_and_matches_clamping():
    k = PrivateKey.generate()
    text = k.to_base64()
    assert len(text) == 44 and text.endswith("=")
    raw = base64.b64decode(text)
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40  # wg genkey clamps
    again = PrivateKey.from_base64(text)
    assert again == k
    assert again.public_key == k.public_key
    assert PublicKey.from_base64(k.public_key.to_base64()) == k.public_key


def test_public_key_matches_rfc7748_vector():
    # RFC 7748 §6.1 Alice's key pair.
    priv = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert PrivateKey(priv).public_key.raw == pub


def test_repr_never_shows_secrets():
    k = PrivateKey.generate()
    psk = PresharedKey.generate()
    for text in (repr(k), str(k), repr(psk), str(psk)):
        assert k.to_base64() not in text and psk.to_base64() not in text
        assert k.secret_bytes().hex() not in text and psk.secret_bytes().hex() not in text
    assert k.public_key.to_base64() in repr(k)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "!" * 44,
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
    ],
)
def test_bad_key_text_raises_key_error_without_echoing_it(text):
    for cls in (PrivateKey, PublicKey, PresharedKey):
        with pytest.raises(KeyError_) as info:
            cls.from_base64(text)
        if len(text) > 4:
            assert text not in str(info.value)


def test_preshared_zero_default():
    assert PresharedKey.zero().secret_bytes() == bytes(32)
    assert PresharedKey.zero() == PresharedKey(bytes(32))
    assert PresharedKey.generate() != PresharedKey.zero()


# --- TAI64N (tunnel.md §5 time.rs checklist) ---------------------------------------------------


def test_tai64n_known_values():
    assert unpack(tai64n(0.0)) == (TAI64N_BASE, 0)
    assert unpack(tai64n(2.2000004)) == (TAI64N_BASE + 2, 184_549_376)
    assert unpack(tai64n(-2.2000004)) == (TAI64N_BASE - 3, 788_529_152)
    assert tai64n(-2.2000004) < tai64n(0.0) < tai64n(2.2000004)


def test_tai64n_clock_is_monotonic_across_wall_clock_steps():
    st1 = 1_700_000_000.5
    times = iter([st1, st1 - 3600, st1 - 3600 + 10, st1 + 1, st1 + 1])
    clock = TAI64NClock(lambda: next(times))
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    # Stepping back gives last + 2^24 ns, not the wall clock's earlier value.
    s0, n0 = unpack(stamps[0])
    assert unpack(stamps[1]) == (s0, n0 + (1 << 24))


def test_tai64n_clock_carries_into_seconds_only_on_u32_overflow():
    clock = TAI64NClock(lambda: 5.99)
    stamps = [unpack(clock.now()) for _ in range(300)]
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
    assert any(n > 999_999_999 for _, n in stamps)  # nanos pass 1e9 before wrapping
    assert stamps[-1][0] == TAI64N_BASE + 6


# --- messages ---------------------------------------------------------------------------------


def _sample_messages():
    init = messages.MessageInitiation(
        0x11223344, b"E" * 32, b"S" * 48, b"T" * 28, b"1" * 16, b"2" * 16
    )
    resp = messages.MessageResponse(5, 6, b"e" * 32, b"n" * 16, b"3" * 16, b"4" * 16)
    reply = messages.MessageCookieReply(7, b"N" * 24, b"C" * 32)
    return [
        (messages.MessageInitiation, init, MESSAGE_INITIATION_SIZE),
        (messages.MessageResponse, resp, MESSAGE_RESPONSE_SIZE),
        (messages.MessageCookieReply, reply, MESSAGE_COOKIE_REPLY_SIZE),
    ]


@pytest.mark.parametrize("cls,msg,size", _sample_messages())
def test_handshake_messages_have_exact_lengths_and_round_trip(cls, msg, size):
    wire = msg.pack()
    assert len(wire) == size
    assert wire[1:4] == b"\0\0\0"
    assert cls.unpack(wire) == msg
    assert cls.unpack(bytearray(wire)) == msg
    assert cls.unpack(memoryview(wire)) == msg
    for n in range(size):
        assert cls.unpack(wire[:n]) is None
    assert cls.unpack(wire + b"\0") is None
    for i in (1, 2, 3):  # reserved bytes must be zero
        bad = bytearray(wire)
        bad[i] = 1
        assert cls.unpack(bad) is None and messages.message_type(bad) is None
    # each type rejects the others
    for other, m2, _ in _sample_messages():
        if other is not cls:
            assert cls.unpack(m2.pack()) is None


def test_transport_header_and_minimum_size():
    hdr = messages.TransportHeader(0xDEADBEEF, 2**64 - 1)
    wire = hdr.pack() + bytes(16)
    assert len(hdr.pack()) == 16
    assert messages.TransportHeader.unpack(wire) == hdr
    assert messages.message_type(wire) == 4
    assert messages.message_type(wire[:31]) is None
    assert messages.TransportHeader.unpack(wire[:31]) is None
    assert struct.unpack_from("<Q", wire, 8)[0] == 2**64 - 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_are_total(data):
    t = messages.message_type(data)
    assert t in (None, 1, 2, 3, 4)
    parsed = [
        cls.unpack(data)
        for cls in (
            messages.MessageInitiation,
            messages.MessageResponse,
            messages.MessageCookieReply,
            messages.TransportHeader,
        )
    ]
    assert sum(p is not None for p in parsed) == (0 if t is None else 1)


# --- Noise (tunnel.md §1.7 vectors, byte for byte) --------------------------------------------

VECTOR_KEYS = bytes(range(160))
IKPSK2_INIT = bytes.fromhex(
    "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd1662544df99f4e2d9c658302e247ec"
    "71c206e70c31df074049bd3d8ab636b27d8a20c512e4beeec758c4b2bee13e5d6c4a6abfe18cb917c010702e"
    "44515036af229780d44f50cf68cf7cdaabd81372"
)
IKPSK2_RESP = bytes.fromhex(
    "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f1d31e903c203fe7ca9187d9e"
    "f4059b09"
)
IK_INIT = bytes.fromhex(
    "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254ad5b8febedeb97415be53612"
    "205e6bfab385e34cb127dd8854c4f9afb10f9b0e49075a6f14f9d5bc61412f096ae4950589aef8286944be93"
    "ca02ab76a5483b51"
)
IK_RESP = bytes.fromhex(
    "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f5ef5508032efff8066fc8584"
    "10f411e8"
)


def _vector_handshake(pattern, payload):
    ist, iep, rst, rep, psk = (VECTOR_KEYS[i : i + 32] for i in range(0, 160, 32))
    i_priv = X25519PrivateKey.from_private_bytes(ist)
    r_priv = X25519PrivateKey.from_private_bytes(rst)
    i_pub = i_priv.public_key().public_bytes_raw()
    r_pub = r_priv.public_key().public_bytes_raw()
    cache = noise.PeerNoiseCache(r_pub, pattern=pattern, prologue=b"TEST HANDSHAKE")
    body, ist_state = noise.create_message_initiation(
        i_priv,
        i_pub,
        cache,
        r_pub,
        noise.DH(i_priv, r_pub),
        payload,
        X25519PrivateKey.from_private_bytes(iep),
    )
    rs = noise.consume_message_initiation(
        r_priv, cache, body, lambda k: noise.DH(r_priv, k) if k == i_pub else None, len(payload)
    )
    resp, r_send, r_recv = noise.create_message_response(
        rs, psk, X25519PrivateKey.from_private_bytes(rep)
    )
    i_send, i_recv = noise.consume_message_response(ist_state, i_priv, resp, psk)
    return body, resp, rs, i_pub, (i_send, i_recv, r_send, r_recv)


@pytest.mark.parametrize(
    "pattern,payload,init,resp",
    [
        (noise.IKPSK2, b"TEST PAYLOAD", IKPSK2_INIT, IKPSK2_RESP),
        (noise.IK, b"", IK_INIT, IK_RESP),
    ],
)
def test_reference_vectors_byte_for_byte(pattern, payload, init, resp):
    body, r, rs, i_pub, (i_send, i_recv, r_send, r_recv) = _vector_handshake(pattern, payload)
    assert body == init
    assert r == resp
    assert rs.remote_static == i_pub
    assert rs.payload == payload
    assert i_send == r_recv and i_recv == r_send and i_send != i_recv


def _pair():
    a, b = PrivateKey.generate(), PrivateKey.generate()
    cache_b = noise.PeerNoiseCache(b.public_key.raw)
    return a, b, cache_b


def test_all_zero_dh_is_rejected():
    a, b, cache_b = _pair()
    with pytest.raises(noise.NoiseError):
        noise.DH(a.x25519(), bytes(32))  # the identity point
    order8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    with pytest.raises(noise.NoiseError):
        noise.DH(a.x25519(), order8)
    # An initiation whose ephemeral is a low-order point is refused by the responder.
    body, _ = noise.create_message_initiation(
        a.x25519(),
        a.public_key.raw,
        cache_b,
        b.public_key.raw,
        noise.DH(a.x25519(), b.public_key.raw),
        bytes(12),
    )
    forged = bytes(32) + body[32:]
    with pytest.raises(noise.NoiseError):
        noise.consume_message_initiation(b.x25519(), cache_b, forged, lambda k: None)


def test_tampered_messages_fail_and_pending_state_survives():
    a, b, cache_b = _pair()
    psk = b"\x07" * 32
    body, state = noise.create_message_initiation(
        a.x25519(),
        a.public_key.raw,
        cache_b,
        b.public_key.raw,
        noise.DH(a.x25519(), b.public_key.raw),
        b"T" * 12,
    )
    lookup = {a.public_key.raw: noise.DH(b.x25519(), a.public_key.raw)}.get
    for i in range(0, len(body), 7):
        bad = bytearray(body)
        bad[i] ^= 1
        with pytest.raises(noise.NoiseError):
            noise.consume_message_initiation(b.x25519(), cache_b, bytes(bad), lookup)
    with pytest.raises(noise.NoiseError):  # unknown static key
        noise.consume_message_initiation(b.x25519(), cache_b, body, lambda k: None)
    rs = noise.consume_message_initiation(b.x25519(), cache_b, body, lookup)
    resp, r_send, r_recv = noise.create_message_response(rs, psk)
    with pytest.raises(noise.NoiseError):
        noise.consume_message_response(state, a.x25519(), bytes(48), psk)
    bad = bytearray(resp)
    bad[3] ^= 0x80
    with pytest.raises(noise.NoiseError):
        noise.consume_message_response(state, a.x25519(), bytes(bad), psk)
    with pytest.raises(noise.NoiseError):  # wrong psk
        noise.consume_message_response(state, a.x25519(), resp, bytes(32))
    i_send, i_recv = noise.consume_message_response(state, a.x25519(), resp, psk)
    assert (i_send, i_recv) == (r_recv, r_send)


# --- cookies ----------------------------------------------------------------------------------


def test_hchacha20_and_xchacha20poly1305_known_answers():
    # draft-irtf-cfrg-xchacha-03 §2.2.1 and §A.3.1
    assert cookie.hchacha20(
        bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927")
    ) == bytes.fromhex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")
    pt = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    for seal, open_ in (
        (cookie.xchacha20poly1305_seal, cookie.xchacha20poly1305_open),
        (cookie.py_xchacha20poly1305_seal, cookie.py_xchacha20poly1305_open),
    ):
        ct = seal(key, nonce, pt, aad)
        assert ct[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"
        assert ct[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
        assert open_(key, nonce, ct, aad) == pt
        assert open_(key, nonce, ct, aad + b"x") is None


def test_hchacha20_matches_the_batch_crypto_module_when_built():
    crypto = pytest.importorskip("dataplane._crypto")
    key, nonce = bytes(range(32)), bytes(range(100, 116))
    assert crypto.hchacha20(key, nonce) == cookie.hchacha20(key, nonce)
    n24 = bytes(range(24))
    assert crypto.xchacha20poly1305_seal(
        key, n24, b"cookie" * 3, b"aad"
    ) == cookie.py_xchacha20poly1305_seal(key, n24, b"cookie" * 3, b"aad")


def _macced_initiation(gen: cookie.CookieGenerator, now: float) -> bytearray:
    msg = bytearray(messages.MessageInitiation(9, b"E" * 32, b"S" * 48, b"T" * 28).pack())
    gen.add_macs(msg, now)
    return msg


def test_mac1_mac2_and_cookie_reply_round_trip():
    responder = PrivateKey.generate()
    checker = cookie.CookieChecker(responder.public_key.raw)
    gen = cookie.CookieGenerator(responder.public_key.raw)
    src = cookie.source_bytes(("192.0.2.1", 51820))
    msg = _macced_initiation(gen, now=10.0)
    assert checker.check_mac1(msg)
    assert msg[-16:] == bytes(16)  # no cookie yet: mac2 zero
    assert not checker.check_mac2(msg, src, 10.0)
    other = cookie.CookieChecker(PrivateKey.generate().public_key.raw)
    assert not other.check_mac1(msg)
    bad = bytearray(msg)
    bad[50] ^= 1
    assert not checker.check_mac1(bad)

    reply = messages.MessageCookieReply.unpack(checker.create_reply(msg, 9, src, 10.0))
    assert reply is not None and reply.receiver == 9
    assert gen.consume_reply(reply, now=10.5)
    msg2 = _macced_initiation(gen, now=11.0)
    assert msg2[-16:] != bytes(16)
    assert checker.check_mac2(msg2, src, 11.0)
    # The cookie is bound to the source address and port.
    assert not checker.check_mac2(msg2, cookie.source_bytes(("192.0.2.1", 51821)), 11.0)
    assert not checker.check_mac2(msg2, cookie.source_bytes(("192.0.2.2", 51820)), 11.0)
    # The stored cookie expires after COOKIE_REFRESH_TIME on the caller's clock.
    assert _macced_initiation(gen, 10.5 + COOKIE_REFRESH_TIME)[-16:] == bytes(16)
    # The secret rotates: after the refresh time the old cookie no longer validates.
    assert not checker.check_mac2(msg2, src, 10.0 + COOKIE_REFRESH_TIME)


def test_cookie_reply_for_another_message_is_ignored():
    responder = PrivateKey.generate()
    checker = cookie.CookieChecker(responder.public_key.raw)
    gen = cookie.CookieGenerator(responder.public_key.raw)
    src = cookie.source_bytes(("2001:db8::1", 1))
    assert not gen.consume_reply(messages.MessageCookieReply(1, bytes(24), bytes(32)), 0.0)
    msg = _macced_initiation(gen, 0.0)
    forged = bytearray(msg)
    forged[-32] ^= 1  # reply bound to a different mac1
    reply = messages.MessageCookieReply.unpack(checker.create_reply(forged, 9, src, 0.0))
    assert not gen.consume_reply(reply, 0.0)
    assert gen.cookie is None


def test_rate_limiter_token_bucket():
    rl = cookie.RateLimiter()
    ip = b"\x0a\x00\x00\x01"
    allowed = sum(rl.allow(ip, 0.0) for _ in range(20))
    assert allowed == 5  # burst
    assert not rl.allow(ip, 0.01)
    assert rl.allow(ip, 0.06)  # one token every 50 ms
    assert not rl.allow(ip, 0.07)
    # over one second at 100/s, about 20 get through
    n = sum(rl.allow(b"\x0a\x00\x00\x02", 1.0 + i / 100) for i in range(100))
    assert 20 <= n <= 26
    assert rl.allow(b"\x0a\x00\x00\x03", 0.0)  # another source is independent


def test_rate_limiter_table_is_bounded():
    rl = cookie.RateLimiter(max_sources=4)
    for i in range(4):
        assert rl.allow(bytes([i]), 0.0)
    assert not rl.allow(b"\x09", 0.5)  # full of active sources: refused
    assert rl.allow(b"\x09", 2.0)  # stale buckets are collected
    assert len(rl) <= 4


def test_load_monitor_enters_and_leaves_under_load():
    lm = cookie.LoadMonitor(threshold=8)
    assert not any(lm.observe(i * 0.2) for i in range(20))  # 5/s: never
    results = [lm.observe(10.0) for _ in range(10)]
    assert results[:7] == [False] * 7 and results[7:] == [True] * 3
    assert lm.under_load(10.9)
    assert not lm.under_load(11.1)


@pytest.mark.parametrize("key_len", [0, 1, 32, 64, 65, 200])
def test_hmac_blake2s_matches_stdlib(key_len):
    import hashlib
    import hmac

    key = bytes(range(key_len % 256)) * (key_len // 256 + 1)
    key = key[:key_len]
    for data in (b"", b"\x01", bytes(100)):
        assert noise.HMAC(key, data) == hmac.digest(key, data, hashlib.blake2s)


def test_kdf_is_hkdf_with_hmac_blake2s():
    import hashlib
    import hmac

    def hkdf(n, key, data):
        t0 = hmac.digest(key, data, hashlib.blake2s)
        out, prev = [], b""
        for i in range(1, n + 1):
            prev = hmac.digest(t0, prev + bytes([i]), hashlib.blake2s)
            out.append(prev)
        return out

    key, data = bytes(range(32)), b"input keying material" * 3
    assert [noise.KDF1(key, data)] == hkdf(1, key, data)
    assert list(noise.KDF2(key, data)) == hkdf(2, key, data)
    assert list(noise.KDF3(key, data)) == hkdf(3, key, data)


def test_text_form_matches_the_wg_tool():
    import shutil
    import subprocess

    from conftest import skip_or_fail

    if shutil.which("wg") is None:
        skip_or_fail("wg (wireguard-tools) is not installed")

    def wg(*args: str, stdin: str = "") -> str:
        return subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    for _ in range(3):
        text = wg("genkey")
        assert PrivateKey.from_base64(text).public_key.to_base64() == wg("pubkey", stdin=text)
        ours = PrivateKey.generate()
        assert wg("pubkey", stdin=ours.to_base64() + "\n") == ours.public_key.to_base64()
    assert len(PresharedKey.from_base64(wg("genpsk")).secret_bytes()) == 32
