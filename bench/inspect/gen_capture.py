"""Write a plaintext XMPP capture for the passive-inspection benchmark (bench/inspect/run.sh).

SESSIONS c2s sessions on loopback-like addresses, each a full login (SASL PLAIN, bind) and
MESSAGES messages of realistic size (a few with URLs, keywords or list domains the policy
matches), as Ethernet/IPv4/TCP packets of at most 1448 payload bytes. Headers are packed by
hand (checksums left zero: neither stanzawall nor tshark needs them) so that a 100 MB capture
takes seconds, not the minutes scapy would.

usage: gen_capture.py OUT.pcap SESSIONS MESSAGES
"""
import random
import struct
import sys

out, sessions, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(6)
WORDS = ("the meeting moved to thursday, please bring the slides and the budget numbers "
         "for the quarterly review; lunch is on the team this time").split()


def stanza(i: int, s: int) -> bytes:
    body = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 60)))
    if i % 50 == 0:
        body += " see https://phish-%d.example/login" % (i % 7)
    if i % 97 == 0:
        body += " confidential"
    to = "bob%d@example.test" % (i % 40) if i % 13 else "x@spam-%d.example" % (i % 500)
    return ("<message to='%s' id='m%d-%d' type='chat'><body>%s</body></message>" % (to, s, i, body)).encode()


def login(s: int):
    c = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
         b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")
    srv = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
           b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='x' version='1.0'>")
    return [(0, c), (1, srv), (1, b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                                    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"),
            (0, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>"),
            (1, b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), (0, c), (1, srv),
            (1, b"<stream:features/>"),
            (0, b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
            (1, b"<iq type='result' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                b"<jid>user%d@example.test/r</jid></bind></iq>" % s)]


with open(out, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    t = 1_800_000_000.0

    def packet(src, dst, sp, dp, seq, ack, flags, payload):
        global t
        t += 0.00001
        tcp = struct.pack(">HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
        frame = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp + payload
        f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)) + frame)

    for s in range(sessions):
        ca, sa = bytes([10, 0, s >> 8 & 255, s & 255]), bytes([10, 1, 0, 1])
        cp, sp = 20000 + s % 40000, 5222
        seq = [1000, 9000]
        ends = [(ca, sa, cp, sp), (sa, ca, sp, cp)]
        packet(ca, sa, cp, sp, seq[0] - 1, 0, 0x02, b"")
        packet(sa, ca, sp, cp, seq[1] - 1, seq[0], 0x12, b"")
        items = login(s) + [(0 if i % 3 else 1, stanza(i, s)) for i in range(messages)]
        for d, data in items:
            for k in range(0, len(data), 1448):
                chunk = data[k:k + 1448]
                a, b, p1, p2 = ends[d]
                packet(a, b, p1, p2, seq[d], seq[1 - d], 0x18, chunk)
                seq[d] += len(chunk)
        for d in (0, 1):
            a, b, p1, p2 = ends[d]
            packet(a, b, p1, p2, seq[d], seq[1 - d], 0x11, b"")
