from transformers import AutoTokenizer

from reasondistill.demo.tokenizer import IM_END, PAD_TOKEN, THINK_CLOSE, THINK_OPEN


def test_every_digit_is_its_own_token(demo_tokenizer):
    text = "Mia has 1234567890 coins. 47+38=85"
    ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [demo_tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567890") + list("473885")
    assert demo_tokenizer.decode(ids) == text


def test_round_trip_of_unseen_text(demo_tokenizer):
    text = "Zürich: 3.14 ≈ π — \\frac{1}{2}\n\ttabs and  double spaces"
    ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert demo_tokenizer.decode(ids) == text


def test_chat_template_has_reasoning_section(demo_tokenizer):
    messages = [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A \\boxed{1}.", "reasoning_content": "step"},
    ]
    text = demo_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
        "<think>\nstep\n</think>\n\nA \\boxed{1}.<|im_end|>\n"
    )
    prompt = demo_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(prompt)


def test_special_tokens_and_think_markers(demo_tokenizer):
    for token in (IM_END, PAD_TOKEN, THINK_OPEN, THINK_CLOSE, "<|im_start|>"):
        ids = demo_tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    assert demo_tokenizer.eos_token == IM_END and demo_tokenizer.pad_token == PAD_TOKEN
    ids = demo_tokenizer(f"{THINK_OPEN}x{THINK_CLOSE}{IM_END}", add_special_tokens=False)["input_ids"]
    # think markers survive skip_special_tokens (the reasoning must stay readable); im_end does not
    assert demo_tokenizer.decode(ids, skip_special_tokens=True) == f"{THINK_OPEN}x{THINK_CLOSE}"
    assert len(demo_tokenizer) <= 512


def test_save_and_reload_in_hugging_face_format(demo_tokenizer, tmp_path):
    demo_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nLeo has 42 cards.<|im_end|>\n"
    assert reloaded(text)["input_ids"] == demo_tokenizer(text)["input_ids"]
    assert reloaded.chat_template == demo_tokenizer.chat_template
    assert reloaded.eos_token == IM_END
