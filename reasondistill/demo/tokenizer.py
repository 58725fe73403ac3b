"""A small byte-level BPE tokenizer for the demo task, saved in standard Hugging Face format.

It mirrors Qwen2's conventions so that code written against the demo models works on real ones:
the same pre-tokenizer regex (every digit its own token, as Qwen2 does), ChatML turns
(<|im_start|>role ... <|im_end|>), <|endoftext|> as padding, and a reasoning section
<think> ... </think> before the visible answer, as DeepSeek-R1 and Qwen3 write it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Qwen2's pre-tokenizer pattern: letters in words, each digit alone, punctuation runs, whitespace.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's: the same but numbers in runs of up to three digits, so BPE can learn multi-digit tokens
# ("128" one token): a student tokenizer that splits the demo's arithmetic differently from the teacher's.
LLAMA3_SPLIT_PATTERN = QWEN2_SPLIT_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

# ChatML with a reasoning section. An assistant message may carry `reasoning_content` (the chain
# of thought); it is rendered inside <think> ... </think> before `content`, as R1-style models do.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "{{ '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' }}"
    "{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, split_pattern: str = QWEN2_SPLIT_PATTERN
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` and wrap it as a Hugging Face fast tokenizer.

    `vocab_size` counts the special tokens; keep it a multiple of 32 so the embedding and
    lm_head shapes suit bitsandbytes' 4-bit CPU kernels. `split_pattern` is the pre-tokenizer's regex
    (QWEN2_SPLIT_PATTERN, or LLAMA3_SPLIT_PATTERN for multi-digit number tokens).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [PAD_TOKEN, IM_START, IM_END]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,  # room for the two think markers added below
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Think markers are ordinary added tokens, not special: decoding with skip_special_tokens keeps
    # them, so the reasoning stays visible in completions (Qwen3 does the same).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
