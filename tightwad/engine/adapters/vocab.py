"""What an HTTP adapter knows of a server's vocabulary without its GGUF: which control-token
texts end generation, and a fingerprint of the vocabulary it shows."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

__all__ = ["EOG_TEXTS", "pieces_fingerprint"]

# Texts of end-of-generation tokens across model families: llama.cpp's own EOG list plus the
# FIM pad / repo / file-separator tokens it also treats as end of generation.
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>",  # deepseek (fullwidth bars)
        "<|fim_pad|>",
        "<fim-pad>",
        "<fim_pad>",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<reponame>",
        "<|file_sep|>",
    }
)


def pieces_fingerprint(
    pieces: Sequence[bytes], special: dict[int, bytes], bos: int, eos: int
) -> str:
    """A vocabulary fingerprint from what a server shows of it (rendered pieces, the text of
    its control tokens, BOS/EOS), for when its GGUF is out of reach. Two servers of one
    tokenizer agree on it; it differs from the GGUF fingerprint of embedded engines, so a
    pairing across the two kinds is refused rather than trusted blindly."""
    digest = hashlib.sha256(b"tightwad-http-vocab-v1\0")
    digest.update(struct.pack("<Q", len(pieces)))
    for i, piece in enumerate(pieces):
        text = special.get(i, piece)
        digest.update(struct.pack("<?Q", i in special, len(text)) + text)
    digest.update(struct.pack("<qq", bos, eos))
    return digest.hexdigest()
