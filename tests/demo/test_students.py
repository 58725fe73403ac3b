"""The demo's student comparison table: mean ± sd over seeds per method, the teacher first."""

from reasondistill.demo.students import StudentResult, summary_table


def test_summary_table_gives_mean_and_spread_over_seeds():
    results = [
        StudentResult("sft", 0, "sft-seed0", 0.5, 0.75, 1.25, 0.5, 1.0),
        StudentResult("sft", 1, "sft-seed1", 0.25, 0.5, 1.5, 0.25, 1.0),
        StudentResult("kd", 0, "kd-seed0", 0.5, 0.8, 1.0, 0.125, 1.0),
    ]
    assert summary_table(results, teacher_accuracy=0.9, teacher_steps=0.95) == (
        "| model | seeds | exact match | step accuracy | held-out CE | held-out KD |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| teacher | - | 90.0% | 95.0% | - | - |\n"
        "| sft | 2 | 37.5% ± 17.7% | 62.5% ± 17.7% | 1.3750 ± 0.1768 | 0.3750 ± 0.1768 |\n"
        "| kd | 1 | 50.0% ± 0.0% | 80.0% ± 0.0% | 1.0000 ± 0.0000 | 0.1250 ± 0.0000 |"
    )
