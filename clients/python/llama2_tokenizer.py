"""llama2_tokenizer — encode and decode with a llama2.c tokenizer.bin, in pure Python.

The file holds `int32 max_token_length`, then for each token `float32 score`, `int32 len` and
`len` bytes. Encoding follows llama2.c: a leading space is added (sentencepiece's dummy prefix),
each UTF-8 character becomes its token (or byte-fallback tokens <0xXX>, ids 3 + byte), then the
adjacent pair whose merge has the highest score is merged until none is in the vocabulary.
"""
import struct


class Tokenizer:
    BOS, EOS = 1, 2

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        (self.max_len,) = struct.unpack_from("<i", data, 0)
        off, self.pieces, self.scores = 4, [], []
        while off < len(data):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            self.scores.append(score)
            off += n
        self.lookup = {p: i for i, p in enumerate(self.pieces)}

    def encode(self, text, bos=True):
        ids = [self.BOS] if bos else []
        if not text:
            return ids
        toks = []
        if b" " in self.lookup:
            toks.append(self.lookup[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                toks.append(self.lookup[b])
            else:
                toks.extend(x + 3 for x in b)  # byte fallback
        while True:
            best, best_i, best_id = -1e10, -1, -1
            for i in range(len(toks) - 1):
                merged = self.pieces[toks[i]] + self.pieces[toks[i + 1]]
                j = self.lookup.get(merged)
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                break
            toks[best_i:best_i + 2] = [best_id]
        return ids + toks

    def decode_piece(self, prev, tok):
        p = self.pieces[tok]
        if prev == self.BOS and p.startswith(b" "):
            p = p[1:]
        if p.startswith(b"<0x") and p.endswith(b">") and len(p) == 6:
            return bytes([int(p[3:5], 16)])
        return p

    def decode(self, ids, prev=None):
        out = b""
        for t in ids:
            out += self.decode_piece(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")
