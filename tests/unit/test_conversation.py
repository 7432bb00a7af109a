"""TRL's preference formats and chat templates: golden tokenizations (no doubled BOS or EOS, the
prompt/response boundary where the template puts it, one prompt for chosen and rejected), the
implicit prompt, column mapping and splits, and clear errors."""

import datasets
import pytest
from tokenizers import processors

from gpo_core.conversation import ChatFormat, ConversationError, split_implicit
from gpo_core.data import DatasetError, load_preferences, load_prompts, write_jsonl
from gpo_core.train.data import tokenize_pairs
from tests.support.chat_model import bpe_tokenizer

TEXTS = ["hello there how are you", "fine thanks", "not now", "Summarize this post.", "what is up"]
USER = [{"role": "user", "content": "hello there"}]
CHOSEN = [{"role": "assistant", "content": "fine thanks"}]
REJECTED = [{"role": "assistant", "content": "not now"}]

# A Llama-style template: it writes BOS itself, and the tokenizer adds one to plain text too.
LLAMA = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chatml():
    return bpe_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def llama():
    tokenizer = bpe_tokenizer([*TEXTS, "[user] [assistant]"], chat_template=LLAMA)
    tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tokenizer


def test_chatml_prompt_and_response_are_the_templates_to_the_token(chatml) -> None:
    chat = ChatFormat(chatml)
    (prompt,) = chat.prompt_ids([USER])
    (response,) = chat.response_ids([USER], [CHOSEN])
    assert chatml.decode(prompt) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml.decode(response) == "fine thanks<|im_end|>"  # ends where generation stops: one eos, no "\n"
    assert response.count(chatml.eos_token_id) == 1 and response[-1] == chatml.eos_token_id
    whole = chatml.apply_chat_template([*USER, *CHOSEN], tokenize=False)
    whole_ids = chatml(whole, add_special_tokens=False)["input_ids"]
    assert whole_ids[: len(prompt) + len(response)] == prompt + response  # the boundary is the template's
    assert chatml.decode(whole_ids[len(prompt) + len(response) :]) == "\n"


def test_a_template_that_writes_bos_gets_one_bos_and_text_keeps_its_own(llama) -> None:
    chat = ChatFormat(llama)
    (conversation, text) = chat.prompt_ids([USER, "hello there"])
    assert conversation.count(llama.bos_token_id) == 1 and conversation[0] == llama.bos_token_id
    assert text.count(llama.bos_token_id) == 1 and text[0] == llama.bos_token_id
    (response,) = chat.response_ids([USER], [CHOSEN])
    # The template writes no eos after a turn: it is appended, once.
    assert llama.decode(response) == "fine thanks </s>" and response.count(llama.eos_token_id) == 1


def test_text_pairs_tokenize_as_before(chatml) -> None:
    record = {"prompt": "hello there", "chosen": " fine thanks", "rejected": " not now"}
    pairs = tokenize_pairs([record], chatml, 64, 64)
    assert pairs.prompts == [chatml("hello there")["input_ids"]]
    assert pairs.chosen == [[*chatml(" fine thanks", add_special_tokens=False)["input_ids"], chatml.eos_token_id]]


def test_chosen_and_rejected_share_the_prompts_tokens(chatml) -> None:
    pairs = tokenize_pairs([{"prompt": USER, "chosen": CHOSEN, "rejected": REJECTED}], chatml, 64, 64)
    assert pairs.prompts == ChatFormat(chatml).prompt_ids([USER])
    assert pairs.chosen != pairs.rejected
    assert chatml.decode(pairs.rejected[0]) == "not now<|im_end|>"


def test_the_three_formats_load_to_the_same_pairs(tmp_path) -> None:
    explicit = {"prompt": USER, "chosen": CHOSEN, "rejected": REJECTED}
    implicit = {"chosen": [*USER, *CHOSEN], "rejected": [*USER, *REJECTED]}
    write_jsonl(tmp_path / "explicit.jsonl", [explicit])
    write_jsonl(tmp_path / "implicit.jsonl", [implicit])
    assert load_preferences(tmp_path / "explicit.jsonl") == load_preferences(tmp_path / "implicit.jsonl") == [explicit]
    text = {"chosen": "Human: hi there Assistant: fine thanks", "rejected": "Human: hi there Assistant: not now"}
    write_jsonl(tmp_path / "text.jsonl", [text])
    (pair,) = load_preferences(tmp_path / "text.jsonl")
    assert pair == {"prompt": "Human: hi there Assistant: ", "chosen": "fine thanks", "rejected": "not now"}


def test_implicit_prompt_splits_at_whole_messages_and_words() -> None:
    two_turns = [*USER, *CHOSEN, {"role": "user", "content": "and then?"}]
    prompt, chosen, rejected = split_implicit([*two_turns, *CHOSEN], [*two_turns, *REJECTED])
    assert prompt == two_turns and chosen == CHOSEN and rejected == REJECTED
    assert split_implicit("the cat sat", "the cap") == ("the ", "cat sat", "cap")
    with pytest.raises(ConversationError, match="both be texts or both be lists"):
        split_implicit("text", CHOSEN)


def test_columns_are_mapped_and_a_split_chosen(tmp_path) -> None:
    rows = {"question": ["hello there"], "good": [" fine"], "bad": [" no"]}
    folder = tmp_path / "hf"
    datasets.DatasetDict(
        {"train_prefs": datasets.Dataset.from_dict(rows), "test_prefs": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(folder))
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    (pair,) = load_preferences(folder, columns=columns, split="test_prefs")
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("hello there", " fine", " no")
    with pytest.raises(DatasetError, match="no split 'train' \\(it has train_prefs, test_prefs\\)"):
        load_preferences(folder, columns=columns)
    with pytest.raises(DatasetError, match="field 'prompt' is missing \\(mapped from the data's column 'query'\\)"):
        load_preferences(folder, columns={**columns, "prompt": "query"}, split="train_prefs")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": USER, "chosen": "fine", "rejected": "no"},
         "fields prompt, chosen, rejected must all be texts or all be lists of messages, not a mix"),
        ({"prompt": [{"role": "robot", "content": "x"}], "chosen": CHOSEN, "rejected": REJECTED},
         "field 'prompt', message 0: role must be one of system, user, assistant, tool, found 'robot'"),
        ({"prompt": USER, "chosen": [{"role": "assistant", "content": 3}], "rejected": REJECTED},
         "field 'chosen', message 0: content must be a string, found int"),
        ({"prompt": [*USER, *CHOSEN], "chosen": CHOSEN, "rejected": REJECTED},
         "field 'prompt': the last message must be the user's, found 'assistant'"),
        ({"prompt": USER, "chosen": USER, "rejected": REJECTED},
         "field 'chosen': the last message must be the assistant's, found 'user'"),
        ({"chosen": CHOSEN, "rejected": REJECTED}, "field 'prompt' is an empty list of messages"),
    ],
)  # fmt: skip
def test_bad_conversations_name_line_and_field(tmp_path, record, message) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DatasetError) as caught:
        load_preferences(path)
    assert str(caught.value) == f"{path}:2: {message}"


def test_conversations_need_a_chat_template(tmp_path) -> None:
    plain = bpe_tokenizer(TEXTS, chat_template=None)
    with pytest.raises(ConversationError, match="the tokenizer has no chat template; give one with the spec's"):
        ChatFormat(plain).prompt_ids([USER])
    assert ChatFormat(plain, bpe_tokenizer(TEXTS).chat_template).prompt_ids([USER]) == ChatFormat(
        bpe_tokenizer(TEXTS)
    ).prompt_ids([USER])
    with pytest.raises(ConversationError, match="the chat template cannot render this conversation"):
        ChatFormat(plain, "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}").prompt_ids([USER])


def test_conversational_prompts_load(tmp_path) -> None:
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": USER}])
    assert load_prompts(path) == [{"id": "a", "prompt": USER}]
