"""Settings of `reasondistill pdq` (prune -> distil -> quantize): three stage recipes and their overrides."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PDQConfig:
    teacher: str = field(
        metadata={"help": "Full-precision model to prune; the teacher whose traces the pruned model learns."}
    )
    traces: str = field(metadata={"help": "Trace dataset of that teacher (`reasondistill generate`)."})
    prune_recipe: str = field(
        default="recipes/demo/prune.yaml", metadata={"help": "Recipe of the prune step (num_layers, ...)."}
    )
    train_recipe: str = field(
        default="recipes/demo/train.yaml",
        metadata={"help": "Recipe of the distil step (`reasondistill train`)."},
    )
    quantize_recipe: str = field(
        default="recipes/demo/quantize.yaml",
        metadata={"help": "Recipe of the quantize step: profiles, benchmark and accuracy settings."},
    )
    prune_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the prune recipe, in YAML as a list: [--key, value, ...]."},
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the train recipe, in YAML as a list: [--key, value, ...]."},
    )
    quantize_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the quantize recipe, in YAML as a list: [--key, value, ...]."},
    )
    output_dir: str = field(
        default="outputs/pdq", metadata={"help": "pruned/, distilled/, quantized/, report."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear and redo the steps whose directories hold runs of other settings instead of "
            "refusing; finished steps of unchanged settings are still reused."
        },
    )
