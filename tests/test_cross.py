"""``avdali cross``: the split rule and in-domain marks, the outputs (Markdown, JSON schema, PNG), one-line errors,
and (end to end) every cell equal to what ``avdali eval`` gives for the same checkpoint, folder and splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.errors import AvdaliError
from avdali.shardformat.manifest import read_manifest
from avdali.experiments.cross import (
    CELL_KEYS,
    SCHEMA,
    CrossCell,
    CrossColumn,
    CrossRow,
    CrossTable,
    markdown,
    parse_split_choices,
    plan_cross,
    write_outputs,
)
from test_eval_cli import PNG_MAGIC, make_checkpoint


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def fake_table() -> CrossTable:
    rows = [CrossRow(Path("r/best.pt"), "r/best.pt", "ravdess", "unified", 3),
            CrossRow(Path("m/best.pt"), "m/best.pt", "meld", "unified", 2)]
    columns = [CrossColumn(Path("s/ravdess"), "ravdess", "ravdess"), CrossColumn(Path("s/meld"), "meld", "meld")]
    rng = np.random.default_rng(0)
    cells = [[CrossCell(rows[i].trained_on == columns[j].dataset, ("fold1",) if j == 0 else ("test",),
                        metrics={**{k: float(rng.random()) for k in CELL_KEYS}, "num_samples": 10 + i + j})
              for j in range(2)] for i in range(2)]
    return CrossTable(rows, columns, cells)


# --- pure parts ---------------------------------------------------------------------------------------------


def test_parse_split_choices():
    assert parse_split_choices(["ravdess=fold1+fold2", "meld = test"]) == {"ravdess": ("fold1", "fold2"), "meld": ("test",)}
    assert parse_split_choices([]) == {}
    for bad in ("fold1", "ravdess=", "=test"):
        with pytest.raises(AvdaliError, match="expected DATASET=SPLIT"):
            parse_split_choices([bad])
    with pytest.raises(AvdaliError, match="given twice"):
        parse_split_choices(["meld=test", "meld=dev"])


def test_outputs_markdown_json_png(tmp_path):
    table = fake_table()
    paths = write_outputs(table, tmp_path / "out")
    text = paths["markdown"].read_text()
    assert text == markdown(table)
    acc = table.values("acc")
    # the accuracy block: in-domain cells (diagonal here) starred, the others not
    assert f"| r/best.pt (ravdess) | {acc[0, 0]:.3f}* | {acc[0, 1]:.3f} |" in text
    assert f"| m/best.pt (meld) | {acc[1, 0]:.3f} | {acc[1, 1]:.3f}* |" in text
    assert "| r/best.pt (ravdess) | 10 (fold1) | 11 (test) |" in text
    for title in ("**accuracy**", "**UA**", "**weighted F1**", "**macro F1**"):
        assert text.count(title) == 1

    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == SCHEMA and doc["metrics"] == ["acc", "ua", "weighted_f1", "macro_f1"]
    assert [c["trained_on"] for c in doc["checkpoints"]] == ["ravdess", "meld"]
    assert [s["dataset"] for s in doc["shards"]] == ["ravdess", "meld"]
    assert [[c["in_domain"] for c in row] for row in doc["cells"]] == [[True, False], [False, True]]
    assert doc["cells"][1][0]["checkpoint"] == 1 and doc["cells"][1][0]["shards"] == 0
    assert doc["cells"][0][1]["splits"] == ["test"] and doc["cells"][0][1]["num_samples"] == 11
    assert doc["cells"][0][0]["ua"] == pytest.approx(table.cells[0][0].metrics["ua"])

    from matplotlib.image import imread

    assert paths["png"].read_bytes().startswith(PNG_MAGIC)
    image = imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert not list(tmp_path.rglob("*.tmp"))


# --- planning: the split rule, in-domain marks and bad input (no evaluation runs) ----------------------------------


def test_plan_split_rule_and_in_domain(tmp_path, ravdess_shards, meld_shards):
    on_ravdess = make_checkpoint(tmp_path / "rav" / "best.pt", ravdess_shards, "data.fold=2")
    on_meld = make_checkpoint(tmp_path / "meld" / "best.pt", meld_shards)
    _, table = plan_cross([on_ravdess, on_meld], [ravdess_shards, meld_shards], device="cpu")
    folds = tuple(sorted(read_manifest(ravdess_shards).splits))
    assert folds == ("fold1", "fold2", "fold3", "fold4", "fold5")
    assert [r.trained_on for r in table.rows] == ["ravdess", "meld"]
    assert table.in_domain().tolist() == [[True, False], [False, True]]
    assert [[c.splits for c in row] for row in table.cells] == [
        [("fold2",), ("test",)],  # in-domain: its held-out fold, like `avdali eval`
        [folds, ("test",)],  # a MELD model never saw any RAVDESS actor: every fold
    ]
    assert not any(c.seen_splits for row in table.cells for c in row)
    # a chosen split applies to every row; an in-domain cell that then reads a training split says so
    _, table = plan_cross([on_ravdess, on_meld], [ravdess_shards], {"ravdess": ("fold1", "fold2")}, device="cpu")
    assert [row[0].splits for row in table.cells] == [("fold1", "fold2")] * 2
    assert [row[0].seen_splits for row in table.cells] == [("fold1",), ()]  # fold 2's run trains on folds 1, 4, 5
    for row in table.cells:
        row[0].metrics = {k: 0.0 for k in CELL_KEYS}
    text = markdown(table)
    assert "| rav/best.pt (ravdess) | 0.000*† |" in text and "| meld/best.pt (meld) | 0.000 |" in text
    assert "`†` reads splits the checkpoint was trained or validated on" in text


def test_plan_reads_the_dataset_from_the_config_when_shards_moved(tmp_path, ravdess_shards, meld_shards):
    ckpt = make_checkpoint(tmp_path / "best.pt", tmp_path / "gone", "data.dataset=meld")
    _, table = plan_cross([ckpt], [meld_shards], device="cpu")
    assert table.cells[0][0].in_domain
    ckpt = make_checkpoint(tmp_path / "old.pt", tmp_path / "gone")
    with pytest.raises(AvdaliError, match="old.pt: cannot tell which dataset it was trained on"):
        plan_cross([ckpt], [meld_shards], device="cpu")


def test_cli_bad_input_is_one_line(tmp_path, ravdess_shards, meld_shards):
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards)
    native = make_checkpoint(tmp_path / "r8.pt", ravdess_shards, "data.label_space=ravdess8")
    cases = [
        (["-k", tmp_path / "nope.pt", "-s", ravdess_shards], "nope.pt: checkpoint not found"),
        (["-k", ckpt, "-s", tmp_path / "nowhere"], "nowhere/manifest.json: no manifest"),
        (["-k", ckpt, "-k", native, "-s", ravdess_shards, "-s", meld_shards], "r8.pt: trained in RAVDESS' native 8-class space"),
        (["-k", ckpt, "-s", ravdess_shards, "--split", "ravdess=fold9"], "no split 'fold9'"),
        (["-k", ckpt, "-s", ravdess_shards, "--split", "meld=test"], "none of the shard folders holds 'meld'"),
        (["-k", ckpt, "-s", ravdess_shards, "--split", "fold1"], "expected DATASET=SPLIT"),
        (["-k", ckpt, "-s", ravdess_shards, "--loader", "nvjpeg"], "--loader must be one of"),
    ]
    for args, message in cases:
        result = run("cross", *args, "--out", tmp_path / "out", "--device", "cpu")
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:"), (args, result.output)
    assert not (tmp_path / "out").exists()  # nothing evaluated, nothing written


# --- end to end against `avdali eval` ----------------------------------------------------------------------------


@pytest.mark.slow  # 83 s on 2 cores at load ≈ 6: 4 cells, then 4 `avdali eval` references
def test_cross_cells_equal_avdali_eval(tmp_path, ravdess_shards, meld_shards):
    on_ravdess = make_checkpoint(tmp_path / "rav" / "best.pt", ravdess_shards, "data.fold=3", seed=0)
    on_meld = make_checkpoint(tmp_path / "meld" / "best.pt", meld_shards, seed=1)
    out = tmp_path / "cross"
    result = run("cross", "-k", on_ravdess, "-k", on_meld, "-s", ravdess_shards, "-s", meld_shards, "--out", out,
                 "--device", "cpu", "--split", "ravdess=fold3+fold4")
    assert result.exit_code == 0, result.output
    assert "**weighted F1**" in result.output and "cross.png" in result.output
    doc = json.loads((out / "cross.json").read_text())
    assert (out / "cross.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "cross.md").read_text() in result.output.replace("\r", "")
    for i, ckpt in enumerate((on_ravdess, on_meld)):
        for j, shards in enumerate((ravdess_shards, meld_shards)):
            cell = doc["cells"][i][j]
            assert cell["in_domain"] == (i == j)
            reference = tmp_path / f"eval-{i}{j}.json"
            split_args = [a for s in cell["splits"] for a in ("--split", s)]
            result = run("eval", "-k", ckpt, "-s", shards, *split_args, "--json", reference, "--png", tmp_path / "c.png", "--device", "cpu")
            assert result.exit_code == 0, result.output
            expected = json.loads(reference.read_text())
            assert expected["splits"] == cell["splits"]
            for key in CELL_KEYS:
                assert cell[key] == pytest.approx(expected["metrics"][key], rel=1e-6), (i, j, key)
    assert doc["cells"][0][0]["splits"] == ["fold3", "fold4"] and doc["cells"][0][1]["splits"] == ["test"]
    assert doc["cells"][0][0]["seen_splits"] == ["fold4"]  # fold 3's run validates on fold 4
    assert [c["seen_splits"] for c in doc["cells"][1]] == [[], []]
    assert "†" in (out / "cross.md").read_text()


# --- avdali demo --cross -------------------------------------------------------------------------------------------


def test_demo_cross_without_meld_csvs_is_one_line(tmp_path, monkeypatch):
    import avdali.cli.demo

    monkeypatch.setattr(avdali.cli.demo, "find_meld_csv_dir", lambda starts: None)
    result = run("demo", "--cross", "--quick", "--out", tmp_path / "demo")
    assert result.exit_code == 1 and "--cross needs the real MELD CSVs" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "demo").exists()


@pytest.mark.slow  # 317 s on 2 cores at load ≈ 6 (3 min CPU): quick RAVDESS demo and quick MELD, 1 epoch each, 4 cells
def test_quick_cross_demo_end_to_end(tmp_path, meld_csv_dir):
    out = tmp_path / "demo"
    result = run("demo", "--cross", "--quick", "--out", out, "--meld-csv", meld_csv_dir, "--set", "train.epochs=1",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["meld synth", "meld shard", "meld train", "cross"]
    meld_ckpt = Path(summary["meld"]["best_checkpoint"])
    assert meld_ckpt.is_file() and meld_ckpt.parent.parent == out / "meld" / "runs"
    doc = json.loads((out / "cross" / "cross.json").read_text())
    assert [c["path"] for c in doc["checkpoints"]] == [summary["ravdess"]["best_checkpoint"], str(meld_ckpt)]
    assert [c["trained_on"] for c in doc["checkpoints"]] == ["ravdess", "meld"]
    assert [s["dataset"] for s in doc["shards"]] == ["ravdess", "meld"]
    assert [[c["in_domain"] for c in row] for row in doc["cells"]] == [[True, False], [False, True]]
    assert doc["cells"][0][0]["splits"] == ["fold1"] and doc["cells"][1][0]["num_samples"] == 180  # all 15 actors × 12
    assert doc["cells"][1][1]["ua"] == pytest.approx(summary["meld"]["test"]["ua"], rel=1e-5)  # = the run's own test
    assert (out / "cross" / "cross.png").read_bytes().startswith(PNG_MAGIC)
    assert "cross-dataset table" in result.output and "**macro F1**" in result.output
