"""``adamodal data check``: one test per kind of problem it names, and its two outcomes."""

from __future__ import annotations

import csv
import shutil

import pytest

from adamodal.cli import main
from adamodal.data.check import check, detect_layout
from adamodal.errors import DataError
from tests.data.conftest import write_png


def problems_of(root, cache, **options):
    name, bundle, problems = check(str(root), {"folder": options, "mimic_cxr": options}, cache)
    assert bundle is None, "expected problems"
    return problems.lines()


def append_row(path, *cells):
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(cells)


# ---------------------------------------------------------------------------- the good case


def test_good_folder_exits_0_with_a_summary(folder_tree, med_cache, capsys) -> None:
    root = folder_tree()
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "(folder): 36 samples, 18 patients, multiclass, 2 classes" in out
    for line in ("client_01", "client_02", "client_03"):
        assert line in out
    assert "image+text" in out and "abnormal" in out and "OK: no problems found" in out


def test_good_mimic_and_named_dataset(mimic_tree, med_cache, capsys) -> None:
    root = mimic_tree()
    assert main(["data", "check", str(root), "--set", "mimic_cxr.uncertain=ignore"]) == 0
    out = capsys.readouterr().out
    assert "unknown (ignored)" in out and "Lung Opacity" in out and "test" in out
    assert main(["data", "check", "mimic_cxr", "--set", f"mimic_cxr.root={root}"]) == 0


def test_layout_detection(folder_tree, mimic_tree, iu_trees, tmp_path) -> None:
    assert detect_layout(folder_tree()) == "folder"
    assert detect_layout(mimic_tree()) == "mimic_cxr"
    assert detect_layout(iu_trees["annotation"]()) == "iu_xray"
    assert detect_layout(iu_trees["nlmcxr"]()) == "iu_xray"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a known layout"):
        detect_layout(tmp_path / "empty")


def test_unknown_target_exits_1(tmp_path, capsys) -> None:
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 1
    assert "neither a folder nor a data set name" in capsys.readouterr().err


# ---------------------------------------------------------------------------- each problem


def test_missing_labels_file(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    (root / "client_02" / "labels.csv").unlink()
    assert problems_of(root, med_cache) == [
        f"{root / 'client_02' / 'labels.csv'}: missing file (every client folder needs a labels.csv)"]


def test_missing_named_file(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    labels = root / "client_01" / "labels.csv"
    labels.write_text(labels.read_text().replace("id,patient,label", "id,patient,label,image")
                      .replace(",normal\n", ",normal,\n").replace(",abnormal\n", ",abnormal,\n"))
    append_row(labels, "s0099", "p9", "normal", "s0099.png")
    assert problems_of(root, med_cache) == [
        f"{root / 'client_01' / 'images' / 's0099.png'}: missing file (named in {labels}:6)"]


def test_unreadable_image(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    bad = root / "client_02" / "images" / "s1001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = problems_of(root, med_cache)
    assert len(lines) == 1 and lines[0].startswith(f"{bad}: unreadable image (")


def test_empty_report(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    (root / "client_01" / "texts" / "s0002.txt").write_text("\n  \n")
    assert problems_of(root, med_cache) == [f"{root / 'client_01' / 'texts' / 's0002.txt'}: empty report"]


def test_label_row_without_image_or_report(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    append_row(root / "client_03" / "labels.csv", "s9999", "p7", "abnormal")
    assert problems_of(root, med_cache) == [
        f"{root / 'client_03' / 'labels.csv'}:6: label row s9999 has no image or report"]


def test_file_without_label_row(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    extra = write_png(root / "client_02" / "images" / "stray.png", seed=5)
    assert problems_of(root, med_cache) == [f"{extra}: no row in labels.csv"]


def test_duplicate_patient_across_clients(folder_tree, med_cache) -> None:
    root = folder_tree(n=4)
    labels = root / "client_02" / "labels.csv"
    labels.write_text(labels.read_text().replace("client_02-p0", "client_01-p0"))
    lines = problems_of(root, med_cache)
    assert lines == [f"{labels}:2: patient client_01-p0 is in two clients (client_01 and client_02)"]
    # the same patient twice inside one client is fine
    labels.write_text(labels.read_text().replace("client_01-p0", "client_02-p1"))
    assert check(str(root), {}, med_cache)[2].lines() == []


def test_patient_in_two_splits(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    split = root / "mimic-cxr-2.0.0-split.csv"
    rows = split.read_text().splitlines()
    # one image of the first patient (validate) moves to the test split
    rows[1] = rows[1].rsplit(",", 1)[0] + ",test"
    split.write_text("\n".join(rows) + "\n")
    lines = problems_of(root, med_cache)
    assert len(lines) == 1 and "patient 10000000 is in two splits (test and train)" in lines[0]


def test_split_lists_a_missing_image(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    img = next((root / "files").glob("p1*/p10000003/s*/*.jpg"))
    img.unlink()
    lines = problems_of(root, med_cache)
    assert lines == [f"{img}: missing file (listed in {root / 'mimic-cxr-2.0.0-split.csv'}:"
                     f"{_split_line(root, img.stem)})"]


def _split_line(root, dicom: str) -> int:
    lines = (root / "mimic-cxr-2.0.0-split.csv").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.startswith(dicom))


def test_mimic_study_without_image_or_report(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    study = next((root / "files").glob("p1*/p10000002/s*/"))
    shutil.rmtree(study)
    (study.parent / f"{study.name}.txt").unlink()
    lines = problems_of(root, med_cache)
    assert len(lines) == 1 and lines[0].endswith(f"label row (study {study.name}) has no image or report")


def test_bad_label_values(folder_tree, mimic_tree, med_cache) -> None:
    root = mimic_tree()
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    rows = labels.read_text().splitlines()
    cells = rows[3].split(",")
    cells[2] = "2.0"
    rows[3] = ",".join(cells)
    labels.write_text("\n".join(rows) + "\n")
    assert problems_of(root, med_cache) == [f"{labels}:4: bad label value: '2.0' is not 1.0, 0.0, -1.0 or blank"]
    folder = folder_tree(n=4)
    append_row(folder / "client_01" / "labels.csv", "s0003x", "p1", "")
    write_png(folder / "client_01" / "images" / "s0003x.png", seed=1)
    assert problems_of(folder, med_cache) == [f"{folder / 'client_01' / 'labels.csv'}:6: empty label"]


def test_missing_mimic_columns_and_files(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    labels.write_text(labels.read_text().replace("Pneumothorax,", "Pneumo,"))
    assert problems_of(root, med_cache) == [f"{labels}: missing column(s) Pneumothorax"]
    labels.unlink()
    assert problems_of(root, med_cache) == [
        f"{labels}: missing file (the chexpert labels; or set mimic_cxr.labels to the other labeller)"]


def test_iu_annotation_missing_image(iu_trees, med_cache) -> None:
    root = iu_trees["annotation"]()
    img = next((root / "images").glob("*/0.png"))
    img.unlink()
    name, bundle, problems = check(str(root), {}, med_cache)
    assert bundle is None and len(problems) == 1 and problems.lines()[0].startswith(f"{img}: missing file (listed in")


def test_several_problems_one_line_each(folder_tree, med_cache, capsys) -> None:
    root = folder_tree(n=4)
    (root / "client_01" / "texts" / "s0002.txt").write_text("")
    (root / "client_02" / "images" / "s1001.png").write_bytes(b"junk")
    append_row(root / "client_03" / "labels.csv", "s9999", "p7", "abnormal")
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and all(line.startswith(str(root)) for line in lines)
    assert "3 problem(s)" in captured.err


# ---------------------------------------------------------------------------- all problems in one pass


def test_empty_report_and_unreadable_image_of_one_row_both_reported(folder_tree, med_cache, capsys) -> None:
    root = folder_tree(n=4)
    text, image = root / "client_01" / "texts" / "s0001.txt", root / "client_01" / "images" / "s0001.png"
    text.write_text("")
    image.write_bytes(b"not an image")
    lines = problems_of(root, med_cache)
    assert len(lines) == 2
    assert f"{text}: empty report" in lines
    assert any(line.startswith(f"{image}: unreadable image (") for line in lines)
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    assert sorted(captured.out.splitlines()) == sorted(lines) and "Traceback" not in captured.err


def test_problems_in_two_clients_and_a_client_without_labels(folder_tree, med_cache, capsys) -> None:
    root = folder_tree(n=4)
    c1, c2, c3 = (root / f"client_0{i}" for i in (1, 2, 3))
    (c1 / "texts" / "s0001.txt").write_text("\n")
    (c1 / "images" / "s0001.png").write_bytes(b"junk")
    labels = c2 / "labels.csv"  # a row with an empty label whose image is also unreadable
    labels.write_text(labels.read_text().replace("s1002,client_02-p1,normal", "s1002,client_02-p1,")
                      .replace("s1002,client_02-p1,abnormal", "s1002,client_02-p1,"))
    (c2 / "images" / "s1002.png").write_bytes(b"junk")
    (c3 / "labels.csv").unlink()  # its files are still checked
    (c3 / "texts" / "s2003.txt").write_text("  ")
    lines = problems_of(root, med_cache)
    expected = [f"{c1 / 'texts' / 's0001.txt'}: empty report", f"{labels}:4: empty label",
                f"{c3 / 'labels.csv'}: missing file (every client folder needs a labels.csv)",
                f"{c3 / 'texts' / 's2003.txt'}: empty report"]
    unreadable = [c1 / "images" / "s0001.png", c2 / "images" / "s1002.png"]
    assert len(lines) == len(expected) + len(unreadable)
    assert all(e in lines for e in expected)
    assert all(any(line.startswith(f"{p}: unreadable image (") for line in lines) for p in unreadable)
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6 and "6 problem(s)" in captured.err
    assert "Traceback" not in captured.err


def test_mimic_bad_row_and_its_files_all_reported(mimic_tree, med_cache) -> None:
    root = mimic_tree()
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    rows = labels.read_text().splitlines()
    cells = rows[1].split(",")
    subject, study = cells[0], cells[1]
    cells[2] = "7"
    rows[1] = ",".join(cells)
    labels.write_text("\n".join(rows) + "\n")
    study_dir = next((root / "files").glob(f"p*/p{subject}/s{study}"))
    report = study_dir.parent / f"s{study}.txt"
    report.write_text("")
    image = sorted(study_dir.glob("*.jpg"))[0]
    image.write_bytes(b"junk")
    lines = problems_of(root, med_cache)
    assert len(lines) == 3
    assert f"{labels}:2: bad label value: '7' is not 1.0, 0.0, -1.0 or blank" in lines
    assert f"{report}: empty report" in lines
    assert any(line.startswith(f"{image}: unreadable image (") for line in lines)


def test_iu_entry_with_a_missing_image_still_checks_the_others(iu_trees, med_cache) -> None:
    root = iu_trees["annotation"]()
    two = sorted(d for d in (root / "images").iterdir() if len(list(d.glob("*.png"))) == 2)[0]
    (two / "0.png").unlink()
    (two / "1.png").write_bytes(b"junk")
    lines = check(str(root), {}, med_cache)[2].lines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{two / '0.png'}: missing file (listed in")
    assert lines[1].startswith(f"{two / '1.png'}: unreadable image (")
