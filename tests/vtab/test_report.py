"""The VTAB-1k report on a hand-made results dict with hand-computed means, and the protocol
of every column."""

import csv

import numpy as np
import pytest

from bit_jax.errors import UserError
from bit_jax.vtab import registry, report

RESULTS = {
    # natural: flowers failed (None), sun397 absent -> mean of 50, 70, 90, 40, 80 = 66.
    "caltech101": 0.50, "cifar100": [0.60, 0.70, 0.80], "dtd": 0.90, "oxford_flowers102": None,
    "oxford_iiit_pet": 0.40, "svhn": 0.80,
    # specialized: mean of 70, 90, 80, 60 = 75.
    "patch_camelyon": 0.70, "eurosat": 0.90, "resisc45": 0.80, "diabetic_retinopathy": 0.60,
    # structured: 10, 20, ..., 80 -> 45.
    **{name: (i + 1) / 10 for i, name in enumerate(
        ["clevr_count", "clevr_distance", "dmlab", "kitti_distance", "dsprites_location",
         "dsprites_orientation", "smallnorb_azimuth", "smallnorb_elevation"])},
}
MEAN_17 = (50 + 70 + 90 + 40 + 80 + 70 + 90 + 80 + 60 + 360) / 17

# Read off vtab_published_results.csv by hand (VTAB-1k columns, percent).
SUP100 = {"cifar100": 57.02999830245972, "patch_camelyon": 80.6121826171875,
          "kitti_distance": 70.56962251663208, "smallnorb_elevation": 35.44136881828308}
SCRATCH = {"cifar100": 13.17107379436493, "dsprites_orientation": 39.15337324142456}
SUP100_MEAN19, SCRATCH_MEAN19 = 66.3676, 43.1435  # Means of those 19 columns.


def rows_by_task(rows):
  return {row["task"]: row for row in rows}


def table(results=RESULTS, **kwargs):
  return report.table(results, **{"protocol": "hyperrule", **kwargs})


def test_table_means_per_group_and_over_present_tasks():
  columns, rows = table()
  assert columns == ["task", "group", "ours", "ours_std", "ours_n", "Sup-100%", "From-Scratch",
                     "BiT-L", "BiT-M", "BiT-S"]
  assert [r["task"] for r in rows] == ["protocol", *registry.names(), "natural mean",
                                       "specialized mean", "structured mean", "mean (19 tasks)"]
  by = rows_by_task(rows)
  assert by["cifar100"]["ours"] == pytest.approx(70.0)
  assert by["cifar100"]["ours_std"] == pytest.approx(10.0)  # ddof=1 over 60, 70, 80.
  assert (by["cifar100"]["ours_n"], by["dtd"]["ours_n"], by["dtd"]["ours_std"]) == (3, 1, 0.0)
  for missing in ("oxford_flowers102", "sun397"):
    assert (by[missing]["ours"], by[missing]["ours_n"]) == (None, 0)
  assert by["natural mean"]["ours"] == pytest.approx(66.0) and by["natural mean"]["ours_n"] == 5
  assert by["specialized mean"]["ours"] == pytest.approx(75.0)
  assert by["structured mean"]["ours"] == pytest.approx(45.0)
  assert by["mean (19 tasks)"]["ours"] == pytest.approx(MEAN_17)
  assert by["mean (19 tasks)"]["ours_n"] == 17


def test_published_columns_line_up_with_the_csv():
  _, rows = table()
  by = rows_by_task(rows)
  for task, value in SUP100.items():
    assert by[task]["Sup-100%"] == pytest.approx(value)
  for task, value in SCRATCH.items():
    assert by[task]["From-Scratch"] == pytest.approx(value)
  # Published means cover all their tasks, ours or not.
  assert by["mean (19 tasks)"]["Sup-100%"] == pytest.approx(SUP100_MEAN19, abs=1e-4)
  assert by["mean (19 tasks)"]["From-Scratch"] == pytest.approx(SCRATCH_MEAN19, abs=1e-4)
  natural = [by[t]["Sup-100%"] for t in registry.names()[:7]]
  assert by["natural mean"]["Sup-100%"] == pytest.approx(np.mean(natural))


def test_bit_headline_means_only_in_the_19_task_row():
  _, rows = table()
  assert [(r["BiT-L"], r["BiT-M"], r["BiT-S"]) for r in rows[1:] if r["BiT-L"] is not None] == [
      (76.3, 70.6, 66.9)]
  assert rows[-1]["task"] == "mean (19 tasks)" and rows[-1]["BiT-L"] == 76.3


def test_published_table_maps_every_vtab1k_column_to_a_task():
  published = report.load_published()
  assert "Sup-100%" in published and "From-Scratch" in published and len(published) == 16
  for scores in published.values():
    assert sorted(scores) == sorted(registry.names())
    assert all(0 <= v <= 100 for v in scores.values())


def test_write_report_files(tmp_path):
  paths = report.write_report(RESULTS, tmp_path / "out", method_name="bit_m",
                              compare=("Sup-100%", "Rotation"), protocol="hyperrule")
  assert set(paths) == {"md", "csv", "png"}

  md = paths["md"].read_text(encoding="utf-8")
  assert "| oxford_flowers102 | natural | — | 0 |" in md
  assert "| cifar100 | natural | 70.0 ± 10.0 | 3 | 57.0 |" in md
  assert "| mean (19 tasks) | all | 58.2 | 17/19 | 66.4 |" in md and "| 76.3 | 70.6 | 66.9 |" in md
  assert "left out of `bit_m`'s means" in md and "oxford_flowers102, sun397." in md
  assert md.startswith("# VTAB-1k top-1 accuracy (%)")
  header, _, protocol_row = md.splitlines()[2:5]
  assert header == "| task | group | bit_m | n | Sup-100% | Rotation | BiT-L | BiT-M | BiT-S |"
  assert protocol_row == ("| protocol |  | hyperrule |  | vtab_lightweight | vtab_lightweight | "
                          "hyperrule | hyperrule | hyperrule |")
  assert "`bit_m` ran hyperrule; columns of vtab_lightweight ran another protocol" in md

  with open(paths["csv"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["task", "group", "bit_m", "bit_m_std", "bit_m_n", "Sup-100%",
                           "Rotation", "BiT-L", "BiT-M", "BiT-S"]
  assert rows[0] == {"task": "protocol", "group": "", "bit_m": "hyperrule", "bit_m_std": "",
                     "bit_m_n": "", "Sup-100%": "vtab_lightweight",
                     "Rotation": "vtab_lightweight", "BiT-L": "hyperrule",
                     "BiT-M": "hyperrule", "BiT-S": "hyperrule"}
  by = rows_by_task(rows)
  assert by["oxford_flowers102"]["bit_m"] == "" and by["oxford_flowers102"]["bit_m_n"] == "0"
  assert float(by["mean (19 tasks)"]["bit_m"]) == pytest.approx(MEAN_17, abs=1e-4)
  assert float(by["cifar100"]["Rotation"]) == pytest.approx(27.320000529289246, abs=1e-4)
  assert by["mean (19 tasks)"]["BiT-L"] == "76.3000" and by["dtd"]["BiT-L"] == ""

  png = paths["png"].read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.parametrize("kwargs,valid", [
    ({"results": {"cifar100": 57.0}}, "fraction in [0, 1]"),  # Percent by mistake.
    ({"results": {"cifar100": [0.5, float("nan")]}}, "fraction in [0, 1]"),
    ({"results": {"cifar-100": 0.5}}, "cifar100"),
    ({"results": {}, "compare": ("Sup-100",)}, "Sup-100%"),
    ({"results": {}, "method_name": "BiT-L"}, "taken"),
])
def test_bad_input_is_a_one_line_user_error(kwargs, valid):
  with pytest.raises(UserError) as error:
    report.table(**{"protocol": "hyperrule", **kwargs})
  assert valid in str(error.value) and "\n" not in str(error.value)


# --- Protocols ------------------------------------------------------------------------------

def test_every_published_vtab_row_ran_the_lightweight_sweep():
  # Read off the table's metadata columns: hyper_sweep_size 4, preprocessing resize(224).
  published = report.published_protocols()
  assert len(published) == 16 and set(published.values()) == {"vtab_lightweight"}


def test_our_protocol_heads_our_column():
  _, rows = table(protocol="vtab_lightweight", compare=("Sup-100%",))
  assert rows[0] == {"task": "protocol", "group": None, "ours": "vtab_lightweight",
                     "ours_std": None, "ours_n": None, "Sup-100%": "vtab_lightweight",
                     "BiT-L": "hyperrule", "BiT-M": "hyperrule", "BiT-S": "hyperrule"}


def test_results_of_different_protocols_are_refused_in_one_column():
  by_task = {task: "hyperrule" for task in RESULTS}
  _, rows = table(protocol=by_task)  # One protocol for all: fine.
  assert rows[0]["ours"] == "hyperrule"
  by_task["svhn"] = by_task["eurosat"] = "vtab_lightweight"
  with pytest.raises(UserError) as error:
    table(protocol=by_task)
  message = str(error.value)
  assert message.startswith("results of different protocols cannot share one column: "
                            "hyperrule (caltech101, cifar100, dtd, oxford_iiit_pet, ")
  assert "; vtab_lightweight (svhn, eurosat)" in message and "\n" not in message
  by_task["svhn"] = by_task["eurosat"] = "hyperrule"
  by_task["oxford_flowers102"] = "vtab_lightweight"  # A failed task has no number: no conflict.
  assert table(protocol=by_task)[1][0]["ours"] == "hyperrule"


@pytest.mark.parametrize("protocol,message", [
    ("sweep", "protocol 'sweep' is now 'hyperrule_sweep'"),
    ("grid", "unknown protocol 'grid'; valid: hyperrule, vtab_lightweight, hyperrule_sweep"),
])
def test_an_unknown_protocol_is_refused(protocol, message):
  with pytest.raises(UserError, match=message):
    table(protocol=protocol)


def test_a_modified_protocol_is_marked_in_the_report(tmp_path):
  label = "vtab_lightweight, modified: lightweight_steps 2,4 (published 2500,10000)"
  paths = report.write_report(RESULTS, tmp_path, protocol=label)
  md = paths["md"].read_text(encoding="utf-8")
  assert md.splitlines()[4].startswith("| protocol |  | vtab_lightweight* |  | vtab_lightweight |")
  assert ("- `ours`: vtab_lightweight with settings changed from the published ones (*): "
          "lightweight_steps 2,4 (published 2500,10000). Not comparable") in md
  with open(paths["csv"], newline="") as f:
    assert next(csv.DictReader(f))["ours"] == label
