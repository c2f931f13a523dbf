"""Word-level tokenizer for the arithmetic world, built in code (no download).

Each operator+operand ("-6", "*2") and the word "Answer:" is one token; every other
character (digits, tags, "=", " ", newline) is its own token. Decoding concatenates
tokens, so decode(encode(x)) == x for any text over the world's alphabet.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from stepforge.worlds.arith.problems import ANSWER_PREFIX, OPERATORS, TAGS, THINK_CLOSE, THINK_OPEN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")  # the step expander's (stepforge.data)
THINKING_TOKENS = (THINK_OPEN, THINK_CLOSE)  # PRefLexOR's tags: added as plain tokens, kept on decoding


def vocabulary() -> list[str]:
    words = [PAD, BOS, EOS, UNK, ANSWER_PREFIX, "=", " ", "\n"]
    words += [str(d) for d in range(10)]
    words += list(TAGS)
    words += [f"{op}{d}" for op in OPERATORS for d in range(10)]
    return words


@lru_cache(maxsize=1)
def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # One regex pass: multi-character words first, then any single character (newline included).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"Answer:|[+\-*][0-9]|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left")


def build_tokenizer_with(special_tokens: tuple[str, ...] | list[str] = FIM_TOKENS, plain: tuple[str, ...] = ()
                         ) -> PreTrainedTokenizerFast:
    """The world tokenizer plus ``special_tokens`` (default: the three FIM tokens), with ids after
    the vocabulary; decoding with ``skip_special_tokens`` drops them; ``plain`` tokens (e.g.
    THINKING_TOKENS) are added as ordinary words, which decoding keeps. A fresh object."""
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(build_tokenizer().backend_tokenizer.to_str()),
                                  bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left")
    if special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    if plain:
        tok.add_tokens(list(plain))
    return tok
