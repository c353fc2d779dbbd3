#!/usr/bin/env python3
"""example_rag.py — a tiny retrieval-augmented generation pipeline on ragkvd.

It keeps a small corpus of documents, retrieves the two that share the most words with the
question, caches them in ragkvd (PUT_CHUNK: the server computes and stores each chunk's KV
once), and asks ragkvd to generate from BOS + the cached chunks (by key) + the question with
CacheBlend, streaming the answer as it is produced. Run it twice: the second time the chunks
are already cached.

    ragkv-admin tenant create demo             # prints the tenant's token
    python3 clients/python/example_rag.py --token rk_... --tokenizer ../shared/models/tok512.bin

The test models are tiny story models: expect a story, not an answer.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ragkv_client as rk  # noqa: E402
from llama2_tokenizer import Tokenizer  # noqa: E402

CORPUS = [
    "Lily had a red ball. She liked to throw the ball in the park with her dog Max.",
    "Tom was a little boy who loved trucks. Every day he played with his big blue truck.",
    "The sun was hot and the sky was blue. The birds sang in the tall green tree.",
    "Sue found a shiny box under her bed. Inside the box was a small gold key.",
]


def words(s):
    return set(re.findall(r"[a-z]+", s.lower()))


def retrieve(question, k):
    q = words(question)
    ranked = sorted(CORPUS, key=lambda d: -len(q & words(d)))
    return ranked[:k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7470)
    ap.add_argument("--token", default=os.environ.get("RAGKV_TOKEN"), help="tenant token (or $RAGKV_TOKEN)")
    ap.add_argument("--tokenizer", required=True, help="the model's tokenizer.bin")
    ap.add_argument("--question", default="Once upon a time Lily went to the park with her ball.")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--blend", default="cacheblend", choices=sorted(rk.BLEND))
    a = ap.parse_args()
    if not a.token:
        ap.error("--token (or $RAGKV_TOKEN) is required: create one with `ragkv-admin tenant create NAME`")

    tok = Tokenizer(a.tokenizer)
    docs = retrieve(a.question, 2)
    segments = [tok.encode(" " + d, bos=False) for d in docs]
    query = tok.encode(" " + a.question, bos=False)
    with rk.Client(a.host, a.port) as c:
        info = c.hello("example_rag")
        who = c.auth(a.token)["tenant"]
        print(f"# {info['server']} serving {info['model']}; tenant {who}", file=sys.stderr)
        for d in docs:
            print(f"# retrieved: {d}", file=sys.stderr)
        # cache the retrieved chunks (a no-op for chunks cached before), then prompt by key
        keys = []
        for d, seg in zip(docs, segments):
            r = c.put_chunk(seg)
            keys.append(r["key"])
            print(f"# chunk {r['key'].hex()[:16]}: {'cached now' if r['created'] else 'already cached'}",
                  file=sys.stderr)
        stats = {}
        prev = query[-1]
        for piece in c.generate(keys, query, max_tokens=a.max_tokens, blend=a.blend, stats=stats):
            sys.stdout.write(tok.decode(piece, prev))
            sys.stdout.flush()
            prev = piece[-1]
        print()
        print(f"# {stats['prompt_tokens']} prompt tokens, {stats['chunk_hits']} chunks from the cache, "
              f"{stats['recomputed']} tokens computed, "
              f"time to first token {stats['ttft_ms']:.1f} ms, total {stats['total_ms']:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
