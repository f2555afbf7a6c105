"""Columnar codec vs docarray protobuf: 10k TextDocs with 128-d float32 embeddings.

Run: ``python benchmarks/codec.py`` (about 10 s). Prints µs/doc for encode, decode and the
round trip of each (best of 3), their ratio, and seconds for 100k docs with ours.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Tuple

import numpy as np
from docarray import DocList
from docarray.documents import TextDoc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.codec import decode_docs, encode_docs  # noqa: E402

DIM = 128


def make_docs(n: int, seed: int = 0) -> DocList[TextDoc]:
    emb = np.random.default_rng(seed).random((n, DIM), dtype=np.float32)
    return DocList[TextDoc]([TextDoc(text=f'document number {i}', embedding=emb[i]) for i in range(n)])


def best_of(repeats: int, encode: Callable, decode: Callable) -> Tuple[float, float, int]:
    """Best encode and best decode seconds over ``repeats`` runs, and the payload size."""
    enc, dec, size = float('inf'), float('inf'), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = encode()
        t1 = time.perf_counter()
        out = decode(data)
        t2 = time.perf_counter()
        enc, dec, size = min(enc, t1 - t0), min(dec, t2 - t1), len(data)
        del out
    return enc, dec, size


def main() -> None:
    n = 10_000
    docs = make_docs(n)
    proto = best_of(3, lambda: docs.to_bytes(protocol='protobuf', compress=None),
                    lambda b: DocList[TextDoc].from_bytes(b, protocol='protobuf', compress=None))
    ours = best_of(3, lambda: encode_docs(docs), lambda b: decode_docs(b, TextDoc))
    ours_untyped = best_of(3, lambda: encode_docs(docs), lambda b: decode_docs(b))

    check = decode_docs(encode_docs(docs), TextDoc)
    assert check.text == docs.text and np.array_equal(check[-1].embedding, docs[-1].embedding)

    us = lambda s: s / n * 1e6  # noqa: E731
    print(f'{n} TextDocs, {DIM}-d float32 embeddings, best of 3 (µs/doc)')
    print(f'{"codec":<28}{"encode":>10}{"decode":>10}{"round trip":>12}{"MB":>8}')
    rows = [('docarray protobuf', proto), ('columnar (doc_type given)', ours),
            ('columnar (doc_type=None)', ours_untyped)]
    for name, (e, d, size) in rows:
        print(f'{name:<28}{us(e):>10.2f}{us(d):>10.2f}{us(e + d):>12.2f}{size / 1e6:>8.2f}')
    ratio = (proto[0] + proto[1]) / (ours[0] + ours[1])
    print(f'round-trip speed-up: {ratio:.1f}x '
          f'(encode {proto[0] / ours[0]:.1f}x, decode {proto[1] / ours[1]:.1f}x)')

    big_n = 100_000
    big = make_docs(big_n, seed=1)
    e, d, size = best_of(3, lambda: encode_docs(big), lambda b: decode_docs(b, TextDoc))
    print(f'\n{big_n} docs, columnar: encode {e:.3f} s, decode {d:.3f} s, {size / 1e6:.1f} MB')


if __name__ == '__main__':
    main()
