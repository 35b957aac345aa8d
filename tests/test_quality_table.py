"""vaelab.quality_table: sample quality of runs side by side, from their own files only."""

from __future__ import annotations

import json

import pytest
import yaml

from vaelab import quality_table
from vaelab.errors import UserError

QUALITY = {
    "quality/samples/confident": 0.3,
    "quality/samples/class_entropy": 0.95,
    "quality/samples/fd": 212.6,
    "quality/samples/precision": 0.63,
    "quality/samples/recall": 0.36,
    "quality/expost/confident": 0.9,
    "quality/expost/class_entropy": 0.999,
    "quality/expost/fd": 17.1,
    "quality/expost/precision": 0.8,
    "quality/expost/recall": 0.7,
    "quality/reconstructions/fd": 10.7,
    "quality/real/fd": 8.8,
    "quality/real/confident": 0.96,
}


def _run(root, name, evaluation, overrides=("experiment=mnist", "paths.data_dir=/data")):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (run / "metrics.json").write_text(json.dumps({"epochs": 30, "fit_seconds": 150.0}))
    if evaluation is not None:
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(evaluation))
    return run


def test_one_row_per_sampler_with_the_share_against_real_images_and_the_floors(tmp_path, capsys):
    run = _run(tmp_path, "base", {**QUALITY, "expost_prior": "50 Gaussians, full covariances"})
    out = tmp_path / "docs" / "samples.md"
    assert quality_table.main([str(run), "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `base`")]
    assert len(rows) == 2 and out.read_text() == capsys.readouterr().out
    prior, expost = rows
    assert "prior p(z), T = 1" in prior and "0.300 (0.31 ×)" in prior and "| 212.6 |" in prior
    assert "ex-post prior (50 Gaussians, full covariances)" in expost and "0.900 (0.94 ×)" in expost
    assert "10.7 / 8.8" in expost and "| 30 | 2.5 min |" in expost
    assert "`experiment=mnist`" in prior and "data_dir" not in prior  # where the data lay: left out
    assert "python -m vaelab.quality_table" in out.read_text()


def test_a_run_without_the_judges_numbers_shows_dashes_and_an_unevaluated_one_is_an_error(tmp_path):
    bare = _run(tmp_path, "bare", {"quality/samples/fd": 40.0})
    (row,) = quality_table.rows(bare)
    assert "| 40.0 |" in row and "| — |" in row and "— / —" in row
    with pytest.raises(UserError, match="no eval/metrics.json. Evaluate the run first"):
        quality_table.rows(_run(tmp_path, "new", None))
