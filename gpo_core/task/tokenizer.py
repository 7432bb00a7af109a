"""A word-level tokenizer for the synthetic vocabulary, built locally with ``tokenizers`` and saved
as a transformers tokenizer folder (``AutoTokenizer.from_pretrained`` and vLLM load it)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from gpo_core.task.corpus import PROMPT_PREFIX, PROMPT_SUFFIX, Vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def build_tokenizer(vocabulary: Vocabulary) -> PreTrainedTokenizerFast:
    """Whitespace-split words, one id each; ``<s>`` prepended to every encoded text."""
    tokens = [*SPECIALS, PROMPT_PREFIX, PROMPT_SUFFIX, *vocabulary.words]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokens.index(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    tokenizer.save_pretrained(folder)
    return folder
