import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.demo.factory import MODEL_SIZES, ModelSize, build_model, count_parameters

PROMPT = [
    {
        "role": "user",
        "content": "Mia has 47 coins. She finds 38 more coins. How many coins does Mia have now?",
    }
]


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_sizes_save_and_reload_through_transformers(size, demo_tokenizer, tmp_path):
    model = build_model(size, demo_tokenizer, seed=0)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(demo_tokenizer)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.out_features % 32 == 0, name
    model.save_pretrained(tmp_path)
    demo_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert count_parameters(reloaded) == count_parameters(model)


def test_sizes_are_ordered_teacher_assistant_student(demo_tokenizer):
    params = {
        s: count_parameters(build_model(s, demo_tokenizer)) for s in ("teacher", "assistant", "student")
    }
    assert params["teacher"] > params["assistant"] > params["student"]


def test_shapes_bitsandbytes_cannot_use_are_refused(demo_tokenizer):
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(
            ModelSize(
                hidden_size=100,
                intermediate_size=256,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
            ),
            demo_tokenizer,
        )


@pytest.mark.slow
def test_vllm_loads_the_saved_model_and_agrees_with_transformers(vllm_engine, tiny_model_dir):
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    out = vllm_engine.llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0]
    vllm_tokens = list(out.outputs[0].token_ids)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    hf = model.generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert len(vllm_tokens) == 8
    assert vllm_tokens == hf[0, len(prompt_ids) :].tolist()
