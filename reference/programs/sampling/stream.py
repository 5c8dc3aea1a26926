"""Streaming text: `TextStream` turns token ids into text as they are drawn (`sample --stream`).

With the byte tokenizer an incomplete UTF-8 sequence is held back until it completes, so the streamed
text equals the decoded whole.
"""

from __future__ import annotations

import codecs

import numpy as np

from ..tokenizers import ByteTokenizer, CharTokenizer

__all__ = ["TextStream"]


class TextStream:
    """Token ids in, text out, piece by piece: the pieces joined equal `tokenizer.decode(all ids)`.

    * byte tokenizer: the bytes go through an incremental UTF-8 decoder (codecs, errors="replace", as
      ByteTokenizer.decode), which holds back an incomplete multi-byte sequence until it completes, and
      `finish()` turns a sequence left incomplete at the end into U+FFFD, as decoding the whole does;
    * char tokenizer: one id is one character, printed at once;
    * any other tokenizer: the whole sequence is decoded again and the new text printed, except a trailing
      U+FFFD (possibly an incomplete character), which waits for the next token or `finish()`.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.kind = "byte" if isinstance(tokenizer, ByteTokenizer) else "char" if isinstance(tokenizer, CharTokenizer) \
            else "other"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._shown = 0                                        # characters of decode(_ids) already returned

    def push(self, ids) -> str:
        """The text that the ids (1-D) complete, possibly empty."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.kind == "char":
            return self.tokenizer.decode(ids)
        if self.kind == "byte":
            self.tokenizer.decode(ids)                         # checks the ids are bytes (0..255)
            return self._decoder.decode(ids.astype(np.uint8).tobytes())
        self._ids.extend(ids.tolist())
        text = self.tokenizer.decode(self._ids)
        end = len(text) - 1 if text.endswith("\ufffd") else len(text)
        piece = text[self._shown:end] if end > self._shown else ""
        self._shown += len(piece)
        return piece

    def finish(self) -> str:
        """Whatever was held back (an incomplete sequence becomes U+FFFD, as in decoding the whole)."""
        if self.kind == "byte":
            return self._decoder.decode(b"", final=True)
        if self.kind == "char":
            return ""
        text = self.tokenizer.decode(self._ids)
        piece, self._shown = text[self._shown:], len(text)
        return piece
