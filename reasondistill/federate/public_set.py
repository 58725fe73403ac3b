"""The public prompt set: prompts with completions that the server and every client hold alike.

Each round the server names some of them by prompt id; every client scores their completions with its own
model and sends back top-k soft labels, so neither prompts nor completions ever travel. Server and clients
build the set from the same settings (`FederateConfig.recipe_settings`, sent with every request) and the
same tokenizer (its fingerprint is checked on every reply).

`task:arithmetic`: the bundled task's problems, each completion the worked solution as the chat template
renders the assistant turn (reasoning in <think> ... </think>, then the answer). A file: its
`public_completion_field` column, tokenized and closed with the end-of-turn token as `generate` scores
existing completions.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.prompts import TASK_PREFIX, PromptRecord, load_prompts, render_prompt
from reasondistill.generate.generate import completion_ids


@dataclass(frozen=True)
class PublicExample:
    """One public prompt with its completion, tokenized."""

    prompt_id: str
    question: str
    gold_answer: str
    prompt: str
    prompt_token_ids: list[int]
    completion_token_ids: list[int]


def _task_records(settings: dict, tokenizer: PreTrainedTokenizerBase) -> list[PromptRecord]:
    """The task's problems with their worked solutions as completion text (the assistant turn, end-of-turn
    token excluded: completion_ids appends it)."""
    problems = generate_problems(
        settings["public-split"],
        settings["public-num-prompts"],
        list(settings["public-task-levels"]),
        settings["public-seed"],
    )
    records = []
    for problem in problems:
        user = [{"role": "user", "content": problem.question}]
        answer = {"role": "assistant", "content": problem.solution, "reasoning_content": problem.reasoning}
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(user + [answer], tokenize=False)
        if not full.startswith(prompt) or tokenizer.eos_token not in full[len(prompt) :]:
            raise ValueError(
                "the tokenizer's chat template does not render an assistant turn after the generation "
                "prompt, "
                "ended by its eos token; use a public prompt file with completions instead"
            )
        completion = full[len(prompt) : full.index(tokenizer.eos_token, len(prompt))]
        records.append(PromptRecord(problem.id, problem.question, str(problem.answer), completion))
    return records


def load_public_set(settings: dict, tokenizer: PreTrainedTokenizerBase) -> dict[str, PublicExample]:
    """The public set by prompt id, in order, from a request's settings (FederateConfig.recipe_settings)."""
    source = settings["public-prompts"]
    if source == f"{TASK_PREFIX}arithmetic":
        records = _task_records(settings, tokenizer)
    else:  # a file, or an unknown bundled task, which load_prompts refuses with the usual message
        records = load_prompts(
            source,
            split=settings["public-split"],
            limit=settings["public-num-prompts"],
            id_field=settings["public-id-field"] or None,
            completion_field=settings["public-completion-field"],
        )
    public = {}
    for record in records:
        prompt = render_prompt(tokenizer, record.question, None, settings["instruction"] or None, False)
        public[record.prompt_id] = PublicExample(
            prompt_id=record.prompt_id,
            question=record.question,
            gold_answer=record.gold_answer,
            prompt=prompt,
            prompt_token_ids=tokenizer(prompt, add_special_tokens=False)["input_ids"],
            completion_token_ids=completion_ids(tokenizer, record),
        )
    if len(public) < settings["public-num-prompts"]:
        raise ValueError(
            f"public prompt set {source!r} has {len(public)} prompts; the rounds need "
            f"{settings['public-num-prompts']} (num_rounds x prompts_per_round)"
        )
    return public
