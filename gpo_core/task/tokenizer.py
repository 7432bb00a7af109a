"""A word-level tokenizer for the synthetic vocabulary, built locally with ``tokenizers`` and saved
as a transformers tokenizer folder (``AutoTokenizer.from_pretrained`` and vLLM load it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from gpo_core.task.corpus import PROMPT_PREFIX, PROMPT_SUFFIX, Vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def word_level_tokenizer(words: Sequence[str], prepend_bos: bool = True) -> PreTrainedTokenizerFast:
    """Whitespace-split words, one id each: ``<pad> <s> </s> <unk>`` are ids 0-3, then ``words``.
    With ``prepend_bos``, ``<s>`` starts every text encoded with special tokens."""
    tokens = [*SPECIALS, *words]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if prepend_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokens.index(BOS))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def build_tokenizer(vocabulary: Vocabulary) -> PreTrainedTokenizerFast:
    """The task's tokenizer: the prompt markers and the vocabulary, ``<s>`` prepended."""
    return word_level_tokenizer([PROMPT_PREFIX, PROMPT_SUFFIX, *vocabulary.words])


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    tokenizer.save_pretrained(folder)
    return folder
