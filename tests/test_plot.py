"""`mlx-align plot`: metrics.jsonl -> one PNG, one panel per metric, train + val."""

import json
import math

import matplotlib.image
import pytest

from mlx_align.apps.plot import metric_panels, metrics_figure, plot_metrics
from mlx_align.cli import main
from mlx_align.core.errors import DataError

# Three logged DPO steps and two eval lines, as train.loop writes them.
ROWS = [
    {
        "step": 1,
        "loss": 0.69,
        "rewards/accuracies": 0.5,
        "rewards/margins": 0.0,
        "tokens": 120.0,
        "tokens_per_sec": 900.0,
        "peak_memory_gb": 0.1,
        "learning_rate": 1e-5,
    },
    {"step": 2, "loss": 0.6, "rewards/accuracies": 0.75, "rewards/margins": 0.2},
    {"step": 2, "val_loss": 0.65, "val_rewards/accuracies": 0.6, "val_tokens": 8},
    {"step": 3, "loss": math.nan, "rewards/accuracies": 1.0, "rewards/margins": 0.5},
    {"step": 3, "val_loss": 0.55, "val_rewards/accuracies": 0.8},
]


def write_run(run_dir, rows=ROWS):
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)  # NaN is written as NaN
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_panels_pair_train_with_val_and_skip_bookkeeping():
    assert metric_panels(ROWS) == {
        "loss": ["loss", "val_loss"],
        "rewards/accuracies": ["rewards/accuracies", "val_rewards/accuracies"],
        "rewards/margins": ["rewards/margins"],
    }


def test_loss_panel_comes_first_even_when_logged_later():
    rows = [{"step": 1, "val_kl": 0.1}, {"step": 1, "kl": 0.2, "loss": 1.0}]
    assert list(metric_panels(rows)) == ["loss", "kl"]
    assert metric_panels(rows)["kl"] == ["kl", "val_kl"]


def test_figure_has_one_axis_per_panel_and_one_curve_per_key():
    figure = metrics_figure(ROWS, title="dpo")
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(metric_panels(ROWS))
    loss_axis = visible[0]
    assert [line.get_label() for line in loss_axis.lines] == ["train", "val"]
    train_steps = list(loss_axis.lines[0].get_xdata())
    assert train_steps == [1, 2]  # step 3's NaN loss is skipped
    assert [len(ax.lines) for ax in visible] == [2, 2, 1]


def test_plot_metrics_writes_a_decodable_png(tmp_path):
    run_dir = write_run(tmp_path / "dpo-run")
    png = plot_metrics(run_dir)
    assert png == run_dir / "metrics.png"
    image = matplotlib.image.imread(png)
    assert image.shape == (320, 1350, 4)  # 1 row x 3 columns of 4.5 x 3.2 in, 100 dpi
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_out_option_writes_elsewhere(tmp_path):
    run_dir = write_run(tmp_path / "run")
    out = tmp_path / "reports" / "curves.png"
    assert plot_metrics(run_dir, out) == out and out.is_file()
    assert not (run_dir / "metrics.png").exists()


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("mlx-align: ")]
    return exit_info.value.code, lines


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"step": 1, "loss": 0.5}\n{"step": 2, loss}\n', ":2: invalid JSON"),
        ("", ": empty file"),
        ('{"step": 1, "loss": 0.5}\n{"loss": 0.4}\n', ":2: missing or non-numeric"),
        ('{"step": 1, "tokens": 5}\n', ": no metric values to plot"),
    ],
)
def test_bad_metrics_file_is_one_line_and_exit_2(tmp_path, capsys, content, expected):
    (tmp_path / "metrics.jsonl").write_text(content)
    code, lines = run_cli(["plot", str(tmp_path)], capsys)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'metrics.jsonl'}{expected}")


def test_missing_run_dir_or_file_is_a_data_error(tmp_path, capsys):
    code, lines = run_cli(["plot", str(tmp_path / "nope")], capsys)
    assert code == 2 and lines == [
        f"error: {tmp_path / 'nope'}: not a run directory (no such directory)"
    ]
    with pytest.raises(DataError, match="metrics.jsonl: file not found"):
        plot_metrics(tmp_path)


def test_cli_plots_and_help_has_an_example(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run")
    main(["plot", str(run_dir)])
    assert "curves written to" in capsys.readouterr().out
    assert (run_dir / "metrics.png").is_file()
    main(["plot", "--help"])
    assert "mlx-align plot runs/" in capsys.readouterr().out


def test_cli_plots_several_runs_at_once(tmp_path, capsys):
    runs = [write_run(tmp_path / name) for name in ("sft", "dpo")]
    main(["plot", *map(str, runs)])
    for run in runs:
        assert matplotlib.image.imread(run / "metrics.png").ndim == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *map(str, runs), "--out", str(tmp_path / "one.png")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "one.png").exists()
