"""ragkv_client — a pure-standard-library Python client for ragkvd's binary protocol v1.

The wire format is specified in docs/protocol.md; this module follows that document only.

    from ragkv_client import Client, RagkvError
    with Client("127.0.0.1", 7470) as c:
        info = c.hello()
        c.auth(token)                      # tenant token from `ragkv-admin tenant create`
        key = c.put_chunk([1, 2, 3])["key"]
        for piece in c.generate([key], query=[4, 5], max_tokens=32):
            ...                            # lists of token ids as they are generated

Every call raises RagkvError(status, name, message) when the server answers with an error.
"""

import hashlib
import socket
import struct

MAGIC = 0x4B52
VERSION = 1
HDR = struct.Struct("<HBBHHQiI")  # magic, version, type, opcode, flags, request id, status, length
assert HDR.size == 24

REQUEST, RESPONSE, STREAM = 1, 2, 3

OPS = {
    "HELLO": 0x0001, "AUTH": 0x0002, "PING": 0x0003,
    "PUT_CHUNK": 0x0010, "PUT_KV": 0x0011, "GET_KV": 0x0012, "LOOKUP": 0x0013,
    "DELETE": 0x0014, "STATS": 0x0015, "GENERATE": 0x0020, "PREFILL_KV": 0x0021,
    "TENANT_CREATE": 0x0100, "TENANT_DELETE": 0x0101, "TENANT_LIST": 0x0102,
    "TOKEN_ROTATE": 0x0103, "QUOTA_SET": 0x0104, "QUOTA_GET": 0x0105, "NS_GRANT": 0x0106,
    "NS_REVOKE": 0x0107, "EVICT": 0x0108, "FLUSH": 0x0109, "INSPECT": 0x010A,
    "CONFIG_GET": 0x010B, "SHUTDOWN": 0x010C, "CLUSTER_NODES": 0x0030,
}

STATUS = {
    0: "RK_OK", -1: "RK_ERR_NOMEM", -2: "RK_ERR_INVALID", -3: "RK_ERR_IO", -4: "RK_ERR_FORMAT",
    -5: "RK_ERR_TRUNCATED", -6: "RK_ERR_CORRUPT", -7: "RK_ERR_UNSUPPORTED",
    -8: "RK_ERR_NOT_FOUND", -9: "RK_ERR_EXISTS", -10: "RK_ERR_RANGE", -11: "RK_ERR_LIMIT",
    -12: "RK_ERR_QUOTA", -13: "RK_ERR_AUTH", -14: "RK_ERR_DENIED", -15: "RK_ERR_PROTOCOL",
    -16: "RK_ERR_TIMEOUT", -17: "RK_ERR_UNAVAILABLE", -18: "RK_ERR_BUSY",
    -19: "RK_ERR_CANCELLED", -20: "RK_ERR_SHUTDOWN", -21: "RK_ERR_DEVICE", -22: "RK_ERR_STORE",
    -23: "RK_ERR_META", -24: "RK_ERR_INTERNAL", -25: "RK_ERR_NOT_IMPLEMENTED",
}

BLEND = {"full": 0, "prefix": 1, "naive": 2, "cacheblend": 3, "cachecraft": 4, "ape": 5}


class RagkvError(Exception):
    """An error status from the server (or a broken connection: status RK_ERR_UNAVAILABLE)."""

    def __init__(self, status, message):
        self.status = status
        self.name = STATUS.get(status, "RK_ERR_UNKNOWN")
        self.message = message
        super().__init__(f"{self.name}: {message}")


# ---- payload primitives (docs/protocol.md section 2) ----------------------------------------

def p_str(s):
    b = s.encode("utf-8")
    if len(b) > 4096:
        raise ValueError("string longer than 4096 bytes")
    return struct.pack("<H", len(b)) + b


def p_tokens(toks):
    toks = list(toks)
    return struct.pack(f"<I{len(toks)}i", len(toks), *toks)


def p_blob(b):
    return struct.pack("<I", len(b)) + bytes(b)


def frame(opcode, request_id, payload=b"", ftype=REQUEST, status=0):
    """Encode one frame: the 24-byte header and the payload."""
    return HDR.pack(MAGIC, VERSION, ftype, opcode, 0, request_id, status, len(payload)) + payload


class Reader:
    """Reads payload primitives; raises RagkvError(RK_ERR_PROTOCOL) when the payload is short."""

    def __init__(self, data):
        self.data, self.off = data, 0

    def take(self, n):
        if self.off + n > len(self.data):
            raise RagkvError(-15, "response payload truncated")
        b = self.data[self.off:self.off + n]
        self.off += n
        return b

    def u8(self): return self.take(1)[0]
    def u16(self): return struct.unpack("<H", self.take(2))[0]
    def u32(self): return struct.unpack("<I", self.take(4))[0]
    def u64(self): return struct.unpack("<Q", self.take(8))[0]
    def f32(self): return struct.unpack("<f", self.take(4))[0]
    def str(self): return self.take(self.u16()).decode("utf-8")
    def blob(self): return self.take(self.u32())

    def tokens(self):
        n = self.u32()
        return list(struct.unpack(f"<{n}i", self.take(4 * n)))


class Client:
    """One connection to ragkvd. Not thread-safe: use one Client per thread."""

    def __init__(self, host="127.0.0.1", port=7470, timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_id = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- framing ----
    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RagkvError(-17, "connection closed by the server")
            buf += chunk
        return bytes(buf)

    def send(self, opcode, payload=b"", request_id=None):
        """Send a request frame; returns its request id (for pipelining with recv())."""
        if request_id is None:
            request_id = self.next_id
            self.next_id += 1
        self.sock.sendall(frame(opcode, request_id, payload))
        return request_id

    def recv(self):
        """Read one frame: (type, opcode, request_id, status, payload)."""
        magic, ver, ftype, op, flags, rid, status, length = HDR.unpack(self._recv_exact(24))
        if magic != MAGIC or ver != VERSION:
            raise RagkvError(-15, "not a ragkv v1 frame")
        return ftype, op, rid, status, self._recv_exact(length) if length else b""

    def call(self, opcode, payload=b"", on_stream=None):
        """Send a request and return the final response's payload as a Reader."""
        rid = self.send(opcode, payload)
        while True:
            ftype, op, got, status, body = self.recv()
            if got != rid:
                continue
            if status != 0:
                raise RagkvError(status, Reader(body).str() if body else "")
            if ftype == STREAM:
                if on_stream:
                    on_stream(Reader(body))
                continue
            return Reader(body)

    # ---- operations (docs/protocol.md section 4) ----
    def hello(self, client_name="ragkv-python"):
        r = self.call(OPS["HELLO"], struct.pack("<HH", VERSION, VERSION) + p_str(client_name))
        return {"version": r.u16(), "max_frame": r.u32(), "server": r.str(), "model": r.str(),
                "vocab": r.u32(), "max_context": r.u32()}

    def ping(self):
        self.call(OPS["PING"])

    def auth(self, token):
        return {"tenant": self.call(OPS["AUTH"], p_str(token)).str()}

    def put_chunk(self, tokens, namespace=""):
        r = self.call(OPS["PUT_CHUNK"], p_str(namespace) + p_tokens(tokens))
        return {"key": r.take(32), "created": bool(r.u8()), "tokens": r.u32(), "bytes": r.u64()}

    def put_kv(self, tokens, container, namespace=""):
        r = self.call(OPS["PUT_KV"], p_str(namespace) + p_tokens(tokens) + p_blob(container))
        return {"key": r.take(32), "created": bool(r.u8()), "bytes": r.u64()}

    def get_kv(self, key=None, tokens=None, namespace="", codec=0xFF, level=0xFF):
        if key is not None:
            body = p_str(namespace) + b"\x00" + bytes(key)
        else:
            body = p_str(namespace) + b"\x01" + p_tokens(tokens)
        return self.call(OPS["GET_KV"], body + bytes([codec, level])).blob()

    def lookup(self, keys, namespace=""):
        r = self.call(OPS["LOOKUP"], p_str(namespace) + struct.pack("<I", len(keys)) + b"".join(keys))
        return [bool(r.u8()) for _ in range(r.u32())]

    def delete(self, key, namespace=""):
        self.call(OPS["DELETE"], p_str(namespace) + bytes(key))

    def cluster_nodes(self):
        """The live nodes ({"id", "addr"}) and the replication factor; no nodes and
        replicas 0 from a server that is not in a cluster."""
        r = self.call(OPS["CLUSTER_NODES"])
        replicas, n = r.u32(), r.u32()
        return {"replicas": replicas, "nodes": [{"id": r.str(), "addr": r.str()} for _ in range(n)]}

    def stats(self):
        r = self.call(OPS["STATS"])
        return {k: r.u64() for k in ("chunks", "bytes", "hits", "misses", "quota_bytes", "quota_chunks")}

    @staticmethod
    def _prompt(segments, query, blend, recompute, namespace):
        body = p_str(namespace) + struct.pack("<I", len(segments))
        for seg in segments:
            if isinstance(seg, (bytes, bytearray)) and len(seg) == 32:
                body += b"\x00" + bytes(seg)
            else:
                body += b"\x01" + p_tokens(seg)
        return body + p_tokens(query) + struct.pack("<Bf", BLEND[blend], recompute)

    def generate(self, segments, query, max_tokens=64, blend="cacheblend", recompute=0.15,
                 temperature=0.0, top_p=1.0, top_k=0, seed=0, namespace="", stats=None):
        """Yield lists of generated token ids as they stream in. segments: chunk keys (32
        bytes) or token lists. When `stats` is a dict it receives the final statistics."""
        body = self._prompt(segments, query, blend, recompute, namespace)
        body += struct.pack("<IffIQB", max_tokens, temperature, top_p, top_k, seed, 1)
        rid = self.send(OPS["GENERATE"], body)
        while True:
            ftype, op, got, status, payload = self.recv()
            if got != rid:
                continue
            if status != 0:
                raise RagkvError(status, Reader(payload).str() if payload else "")
            r = Reader(payload)
            if ftype == STREAM:
                yield r.tokens()
                continue
            final = {"tokens": r.tokens(), "prompt_tokens": r.u32(), "recomputed": r.u32(),
                     "chunk_hits": r.u32(), "chunk_misses": r.u32(), "ttft_ms": r.f32(),
                     "total_ms": r.f32(), "finish": r.u8()}
            if final["tokens"]:
                yield final["tokens"]
            if stats is not None:
                stats.update(final)
            return

    # ---- admin operations (an admin-authenticated connection) ----
    def tenant_create(self, tenant, quota_bytes=0, quota_chunks=0, policy=0):
        r = self.call(OPS["TENANT_CREATE"], p_str(tenant) + struct.pack("<QQB", quota_bytes, quota_chunks, policy))
        return r.str()

    def tenant_delete(self, tenant):
        self.call(OPS["TENANT_DELETE"], p_str(tenant))

    def token_rotate(self, tenant):
        return self.call(OPS["TOKEN_ROTATE"], p_str(tenant)).str()


# ---- cluster routing (docs/deployment.md) ----

def node_score(node_id, key):
    """Rendezvous score of a node for a chunk key: the first 8 bytes, little-endian, of
    BLAKE2b-128(node id || 0x00 || key) — the same function ragkvd places chunks with."""
    d = hashlib.blake2b(node_id.encode("utf-8") + b"\x00" + bytes(key), digest_size=16).digest()
    return struct.unpack("<Q", d[:8])[0]


def rank_nodes(nodes, key):
    """nodes (from Client.cluster_nodes) sorted by score for key, highest first: the first
    `replicas` of them own the chunk, and a request sent to nodes[0] needs no peer hop."""
    return sorted(nodes, key=lambda n: (-node_score(n["id"], key), n["id"]))


class Router:
    """Sends each request to an owner of its chunk: asks one node for the live nodes, then
    keeps one authenticated connection per node. A node that cannot be reached is skipped
    (the next in rank order answers: any node serves any request) and the node list is
    fetched again.

        r = Router("10.0.0.11", 7470, token)
        r.client_for(key).get_kv(key=key)
        r.close()
    """

    def __init__(self, host, port, token, timeout=30.0):
        self.token, self.timeout = token, timeout
        self.seeds = [(host, int(port))]
        self.conns = {}
        self.refresh()

    def _connect(self, host, port):
        c = Client(host, port, timeout=self.timeout)
        c.auth(self.token)
        return c

    def refresh(self):
        """Fetch the live nodes from any node we know."""
        for host, port in self.seeds:
            try:
                with self._connect(host, port) as c:
                    info = c.cluster_nodes()
            except (OSError, RagkvError):
                continue
            self.replicas, self.nodes = info["replicas"], info["nodes"]
            if self.nodes:
                self.seeds = [tuple(n["addr"].rsplit(":", 1)) for n in self.nodes]
                self.seeds = [(h, int(p)) for h, p in self.seeds]
            return
        raise RagkvError(-17, "no node answered CLUSTER_NODES")

    def client_for(self, key):
        """An authenticated Client on the first reachable node in key's ranking (the seed when
        the server is not in a cluster)."""
        ranked = rank_nodes(self.nodes, key) if self.nodes else [{"id": "seed", "addr": "%s:%d" % self.seeds[0]}]
        for n in ranked:
            c = self.conns.get(n["id"])
            if c is None:
                host, port = n["addr"].rsplit(":", 1)
                try:
                    c = self.conns[n["id"]] = self._connect(host, int(port))
                except (OSError, RagkvError):
                    continue
            return c
        self.refresh()
        raise RagkvError(-17, "no node reachable")

    def forget(self, key):
        """Drop the connection client_for(key) returned (after it failed)."""
        for n in (rank_nodes(self.nodes, key) if self.nodes else []):
            c = self.conns.pop(n["id"], None)
            if c is not None:
                c.close()
                return

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns = {}
