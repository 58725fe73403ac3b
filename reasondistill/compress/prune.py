"""Structured pruning of a Qwen2, Qwen3, Llama or Gemma 3 model: fewer layers (depth), narrower MLPs (width).

The result is a smaller model directory of the same architecture, loadable by transformers, vLLM and
PEFT, which the trainer then distils from the teacher to win back what pruning lost ("prune, distil,
quantize"):

    reasondistill prune recipes/demo/prune.yaml --model DIR --num_layers 3 --intermediate_size 512

Both criteria are measured on calibration sequences: prompts from a prompt source plus the model's own
greedy continuations, so the activations are those of reasoning, not of prompts alone.

- **Depth**: layers are removed one at a time, greedily; each round drops the layer whose removal (the
  layer bypassed) hurts least, by `depth_criterion`: `kl`, the mean forward KL from the unpruned model's
  next-token distribution (its top-20 + tail, as token-level KD trains on) to the smaller model's over the
  continuation tokens (what distillation will have to win back; 0 for a layer that does nothing), or
  `cosine`, the mean cosine distance of the final hidden states (after the last norm) from the unpruned
  model's (block importance) over all tokens. Measuring at the output, not across each layer alone,
  accounts for how later layers respond to the removal; it costs one calibration pass per remaining
  layer per round. The two can disagree: on the demo teacher `cosine` kept layers 0 and 3 and lost its
  copying of the question's numbers (CE 0.76 on its traces, 1.80 on the first step's digits), `kl` keeps
  0 and 1 (CE 0.30, 0.11).
- **Width**: in every remaining layer, MLP channel j is scored by E|a_j| * ||W_down[:, j]||, the mean size
  of what it adds to the residual stream (a = act(gate(x)) * up(x), the input of down_proj); the top
  `intermediate_size` channels are kept in their original order. These architectures have one intermediate
  size for all layers, so every layer keeps the same number; it must be a multiple of 32 (bitsandbytes' CPU
  kernels).

The four share the decoder layout both steps touch (`model.layers[i].mlp.{gate,up,down}_proj`, a KV-cache
slot per attention layer); a config with per-layer attention types (`layer_types`: Gemma 3's sliding-window
and full-attention layers, Qwen2's and Qwen3's optional sliding windows) keeps each kept layer's own type.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reasondistill.compress.merge import check_full_precision
from reasondistill.compress.prune_config import DepthCriterion, PruneConfig
from reasondistill.core.model_dir import check_model_source
from reasondistill.core.prompts import load_prompts, render_prompt
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.run_reuse import run_in_dir
from reasondistill.train.losses.divergences import divergence
from reasondistill.train.losses.topk_targets import student_buckets, teacher_buckets

logger = logging.getLogger(__name__)
KL_TOP_K = 20  # the unpruned model's top-k (+ tail bucket) that depth_criterion kl compares, as KD does
# model_type -> name: the architectures whose layout (model.layers[i].mlp.*_proj) the steps below assume
PRUNABLE = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama", "gemma3_text": "Gemma 3"}


@torch.no_grad()
def calibration_batches(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: PruneConfig
) -> list[dict[str, torch.Tensor]]:
    """Left-padded batches of prompts plus the model's greedy continuations: input_ids, attention_mask and
    labels (the continuation's real tokens; -100 on prompts and on what follows an end of turn)."""
    prompts = load_prompts(
        config.calibration_prompts,
        limit=config.num_calibration,
        question_field=config.question_field,
        answer_field=config.answer_field,
        seed=config.seed,
    )
    texts = [render_prompt(tokenizer, p.question, None, None, False) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for start in range(0, len(texts), config.batch_size):
        batch = tokenizer(
            texts[start : start + config.batch_size],
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        prompt_width = batch.input_ids.shape[1]
        if config.calibration_tokens:
            ids = model.generate(
                **batch, max_new_tokens=config.calibration_tokens, do_sample=False, pad_token_id=pad
            )
            # a new token is real until the sequence's end of turn (inclusive); after it generate pads
            is_eos = (ids[:, batch.input_ids.shape[1] :] == tokenizer.eos_token_id).long()
            real = (is_eos.cumsum(1) - is_eos == 0).long()
            batch = {"input_ids": ids, "attention_mask": torch.cat([batch.attention_mask, real], dim=1)}
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        labels[:, :prompt_width] = -100
        batches.append({**batch, "labels": labels})
    return batches


def _skip(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """Forward hook that turns a decoder layer into the identity: its input passes through unchanged."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def bypassed(model: PreTrainedModel, skip: Collection[int]) -> Iterator[None]:
    """Within the block, the decoder layers in `skip` pass their input through unchanged."""
    handles = [
        layer.register_forward_hook(_skip, with_kwargs=True)
        for index, layer in enumerate(model.model.layers)
        if index in skip
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def final_hidden(
    model: PreTrainedModel, batches: list[dict], skip: Collection[int] = frozenset()
) -> list[torch.Tensor]:
    """Last hidden states (after the final norm) [B, T, H] per batch, with the layers in `skip` bypassed."""
    with bypassed(model, skip):
        return [model.model(**model_inputs(batch)).last_hidden_state for batch in batches]


def continuation_logits(
    model: PreTrainedModel, batches: list[dict], skip: Collection[int] = frozenset()
) -> Iterator[torch.Tensor]:
    """Per batch, the next-token logits [N, V] at the N positions that predict a labelled token (the
    unpruned model's own continuation), with the layers in `skip` bypassed."""
    with torch.no_grad(), bypassed(model, skip):
        for batch in batches:
            logits = model(**model_inputs(batch)).logits[:, :-1]  # position t predicts token t + 1
            yield logits[batch["labels"][:, 1:] != -100]


def reference_topk(
    model: PreTrainedModel, batches: list[dict], top_k: int = KL_TOP_K
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch, the unpruned model's top-k next-token (log-probs, ids) [N, k] at its continuation."""
    return [
        logits.float().log_softmax(-1).topk(min(top_k, logits.shape[-1]))
        for logits in continuation_logits(model, batches)
    ]


def continuation_kl(
    model: PreTrainedModel,
    batches: list[dict],
    reference: list[tuple[torch.Tensor, torch.Tensor]],
    skip: Collection[int] = frozenset(),
) -> float:
    """Mean over the continuation's tokens of KL(unpruned || pruned) on the buckets of the unpruned model's
    top-k + tail (what token-level KD trains the pruned model back towards), `skip` bypassed."""
    total = count = 0.0
    for logits, (top_logprobs, top_ids) in zip(
        continuation_logits(model, batches, skip), reference, strict=True
    ):
        kl = divergence(teacher_buckets(top_logprobs), student_buckets(logits, top_ids), "forward_kl")
        total += kl.sum().item()
        count += kl.numel()
    return total / count


def cosine_distance(ours: list[torch.Tensor], reference: list[torch.Tensor], batches: list[dict]) -> float:
    """Mean over real (unmasked) tokens of 1 - cos(ours, reference)."""
    total = count = 0.0
    for a, b, batch in zip(ours, reference, batches, strict=True):
        mask = batch["attention_mask"].bool()
        distance = 1 - nn.functional.cosine_similarity(a, b, dim=-1)  # [B, T]
        total += distance[mask].sum().item()
        count += mask.sum().item()
    return total / count


def choose_layers_to_drop(
    model: PreTrainedModel, batches: list[dict], num_drop: int, criterion: DepthCriterion
) -> list[dict]:
    """Greedy depth pruning; one record per round: the layer dropped and each candidate's score (`criterion`
    with that layer bypassed too; the lowest goes)."""
    if criterion == "cosine":
        reference = final_hidden(model, batches)

        def score(skip: set[int]) -> float:
            return cosine_distance(final_hidden(model, batches, skip), reference, batches)
    else:
        reference_kl = reference_topk(model, batches)

        def score(skip: set[int]) -> float:
            return continuation_kl(model, batches, reference_kl, skip)

    dropped: set[int] = set()
    rounds = []
    for _ in range(num_drop):
        candidates = [i for i in range(len(model.model.layers)) if i not in dropped]
        scores = {i: score(dropped | {i}) for i in candidates}
        layer = min(scores, key=scores.get)
        dropped.add(layer)
        rounds.append({"dropped": layer, "scores": scores})
    return rounds


def keep_layers(model: PreTrainedModel, keep: list[int]) -> None:
    """Shrink the model to the decoder layers `keep` (in order), renumbering their KV-cache slots."""
    layers = model.model.layers
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index
    if getattr(model.config, "layer_types", None) is not None:  # Llama's config has none
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)


@torch.no_grad()
def channel_importance(model: PreTrainedModel, batches: list[dict]) -> list[torch.Tensor]:
    """Per layer, [intermediate_size] scores E|a_j| * ||W_down[:, j]|| over real calibration tokens."""
    sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in model.model.layers]
    current_mask: list[torch.Tensor] = []
    tokens = 0

    def recorder(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            activations = args[0]  # [B, T, intermediate]: the input of down_proj
            sums[index] += activations[current_mask[0]].abs().float().sum(0)

        return hook

    handles = [
        layer.mlp.down_proj.register_forward_pre_hook(recorder(i))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        for batch in batches:
            current_mask[:] = [batch["attention_mask"].bool()]
            tokens += int(current_mask[0].sum())
            model.model(**model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    return [
        total / tokens * layer.mlp.down_proj.weight.float().norm(dim=0)
        for total, layer in zip(sums, model.model.layers, strict=True)
    ]


def sliced(
    linear: nn.Linear, outputs: torch.Tensor | None = None, inputs: torch.Tensor | None = None
) -> nn.Linear:
    """A copy of `linear` keeping only the output rows `outputs` and input columns `inputs` (None: all)."""
    weight = linear.weight.data
    weight = weight if outputs is None else weight[outputs]
    weight = weight if inputs is None else weight[:, inputs]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, dtype=weight.dtype)
    new.weight.data = weight.clone()
    if linear.bias is not None:
        new.bias.data = (linear.bias.data if outputs is None else linear.bias.data[outputs]).clone()
    return new


def keep_channels(model: PreTrainedModel, keep: list[torch.Tensor]) -> None:
    """Slice every layer's MLP to the channels `keep[layer]` (sorted indices of equal length)."""
    for layer, channels in zip(model.model.layers, keep, strict=True):
        mlp = layer.mlp
        mlp.gate_proj = sliced(mlp.gate_proj, outputs=channels)
        mlp.up_proj = sliced(mlp.up_proj, outputs=channels)
        mlp.down_proj = sliced(mlp.down_proj, inputs=channels)
        mlp.intermediate_size = len(channels)
    model.config.intermediate_size = len(keep[0])


def prune_model(config: PruneConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Load, calibrate, drop layers, then narrow the MLPs (scored on the depth-pruned model)."""
    check_full_precision(config.model, "model")
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    if model.config.model_type not in PRUNABLE:
        supported = ", ".join(f"{name} ({model_type})" for model_type, name in PRUNABLE.items())
        raise ValueError(
            f"{config.model} is a {model.config.model_type} model; pruning supports {supported} only"
        )
    layers, width = model.config.num_hidden_layers, model.config.intermediate_size
    if (config.num_layers or 0) > layers or (config.intermediate_size or 0) > width:
        raise ValueError(
            f"{config.model} has {layers} layers and intermediate_size {width}; num_layers and "
            "intermediate_size must not exceed them"
        )
    info: dict = {"source": config.model, "parameters_before": sum(p.numel() for p in model.parameters())}
    batches = calibration_batches(model, tokenizer, config)
    if config.num_layers is not None and config.num_layers < layers:
        rounds = choose_layers_to_drop(model, batches, layers - config.num_layers, config.depth_criterion)
        dropped = {r["dropped"] for r in rounds}
        info["kept_layers"] = [i for i in range(layers) if i not in dropped]
        info["depth_criterion"], info["depth_rounds"] = config.depth_criterion, rounds
        keep_layers(model, info["kept_layers"])
    if config.intermediate_size is not None and config.intermediate_size < width:
        scores = channel_importance(model, batches)
        keep = [score.topk(config.intermediate_size).indices.sort().values for score in scores]
        info["kept_fraction_of_importance"] = [
            float(score[k].sum() / score.sum()) for score, k in zip(scores, keep, strict=True)
        ]
        keep_channels(model, keep)
    info["parameters_after"] = sum(p.numel() for p in model.parameters())
    info["num_layers"], info["intermediate_size"] = (
        model.config.num_hidden_layers,
        model.config.intermediate_size,
    )
    return model, tokenizer, info


PRUNE_RECIPE_FILE = "prune_recipe.yaml"
PRUNE_INFO_FILE = "prune_info.json"


def save_pruned(config: PruneConfig) -> tuple[Path, dict]:
    """Prune and write the model directory with `prune_info.json`; the caller records the run in it
    (`run_in_dir` or `run_unless_done` with PRUNE_RECIPE_FILE)."""
    model, tokenizer, info = prune_model(config)
    out = Path(config.output_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / PRUNE_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out, info


def describe(config: PruneConfig, out: Path, info: dict) -> str:
    return (
        f"pruned {config.model}: {info['parameters_before']:,} -> {info['parameters_after']:,} parameters, "
        f"{info['num_layers']} layers, intermediate_size {info['intermediate_size']}: {out}"
    )


def run_prune(recipe: str | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (PruneConfig,), overrides)
    check_model_source(config.model, "model")
    with run_in_dir([config], Path(config.output_dir) / PRUNE_RECIPE_FILE, config.overwrite):
        out, info = save_pruned(config)
    logger.info(describe(config, out, info))
    return 0
