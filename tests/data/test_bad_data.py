"""Bad data through the real CLI: refused before training in one line (exit 2, nothing written),
or, found mid-run, named in one line (split, item, file, cause; exit 2) with ``last.pt`` intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from tests.conftest import QUIET, compose_config, run_cli
from tests.data.test_map_style import write_image_folder
from trainer.data.batches import epoch_order
from trainer.rundir.checkpoint import load_checkpoint

SIZE, BATCH = 64, 8  # 8 updates per epoch


class Faulty(Dataset):
    """``size`` examples of 4 features, class k % 2, except: item ``raise_at`` raises, item
    ``reshape_at`` has 5 features, item ``label_at`` has label 7."""

    def __init__(self, size: int, raise_at: int = -1, reshape_at: int = -1, label_at: int = -1) -> None:
        self.size, self.raise_at, self.reshape_at, self.label_at = size, raise_at, reshape_at, label_at

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        if k == self.raise_at:
            raise RuntimeError(f"record {k} is corrupt")
        features = torch.full((5 if k == self.reshape_at else 4,), float(k % 2)) + 0.01 * k
        return features, 7 if k == self.label_at else k % 2


def faulty(split_size: int, **faults: int) -> str:
    """A ``data.train``/``data.val`` override value building :class:`Faulty`."""
    return "{" + ",".join([f"_target_:{__name__}.Faulty", f"size:{split_size}", *(f"{k}:{v}" for k, v in faults.items())]) + "}"


def torch_dataset_args(run_dir: Path, *, train: str, val: str, workers: int = 0) -> list[str]:
    return [*QUIET, "model=mlp", "data=torch_dataset", f"data.train={train}", f"data.val={val}", "data.num_classes=2",
            f"data.batch_size={BATCH}", f"data.num_workers={workers}", "schedule=constant", "trainer.max_epochs=1",
            "trainer.checkpoint_every_n_steps=1", f"hydra.run.dir={run_dir}"]


def update_reading(index: int, num_examples: int, batch_size: int) -> int:
    """The update (0-based) of epoch 0 whose micro-batch holds example ``index`` (seed 0, one rank)."""
    return epoch_order(num_examples, seed=0, epoch=0).tolist().index(index) // batch_size


def assert_one_error_line(proc, *parts: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def assert_failed_after(run_dir: Path, updates: int) -> None:
    """The run failed after ``updates`` updates: ``last.pt`` holds them and loads, metrics.json says failed."""
    assert load_checkpoint(run_dir / "last.pt")["update"] == updates
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("DataError: ")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("fault, index, message", [
    ("raise_at", 37, "train item 37: RuntimeError: record 37 is corrupt; fix or remove it, or set data.on_error=skip"),
    ("reshape_at", 40, "train item 40: input of shape (5,), not (4,) as item 0 of the training split"),
    ("label_at", 50, "train item 50: label 7 is outside 0..1 (data.num_classes=2)"),
])
def test_a_bad_training_example_mid_run_is_one_line_naming_it(tmp_path, fault, index, message, workers):
    failing_update = update_reading(index, SIZE, BATCH)
    assert failing_update >= 1  # so a checkpoint was written before it
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", torch_dataset_args(run_dir, train=faulty(SIZE, **{fault: index}), val=faulty(16),
                                                  workers=workers), check=False)
    assert_one_error_line(proc, message)
    assert_failed_after(run_dir, failing_update)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_validation_example_of_another_shape_is_named_after_the_epochs_updates(tmp_path, workers):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", torch_dataset_args(run_dir, train=faulty(SIZE), val=faulty(16, reshape_at=5),
                                                  workers=workers), check=False)
    assert_one_error_line(proc, "error: val item 5: input of shape (5,), not (4,)")
    assert_failed_after(run_dir, SIZE // BATCH - 1)  # the epoch end validates before its checkpoint


def write_bad_images(root: Path, *, per_class: int) -> tuple[Path, Path]:
    """``root/{cat,dog}``, plus ``cat/broken.jpg`` (a JPEG cut short) and ``dog/notes.jpg`` (text)."""
    write_image_folder(root, per_class=per_class, size=(16, 16))
    broken, text = root / "cat" / "broken.jpg", root / "dog" / "notes.jpg"
    Image.new("RGB", (64, 64), (200, 30, 60)).save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    text.write_text("not an image\n")
    return broken, text


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("bad", ["broken", "text"])
def test_a_damaged_image_mid_run_is_one_line_naming_its_file(tmp_path, bad, workers):
    per_class = 6
    broken, text = write_bad_images(tmp_path / "train", per_class=per_class)
    path = broken if bad == "broken" else text
    # sorted within each class: cat/0..5.png, [cat/broken.jpg], dog/0..5.png, [dog/notes.jpg]
    index = per_class if bad == "broken" else 2 * per_class
    other = tmp_path / "train" / ("dog" if bad == "broken" else "cat") / ("notes.jpg" if bad == "broken" else "broken.jpg")
    other.unlink()  # one bad file per run: the run fails at the one named
    size = 2 * per_class + 1
    failing_update = update_reading(index, size, 2)
    assert 1 <= failing_update < size // 2  # a checkpoint before it; not in the partial batch dropped
    write_image_folder(tmp_path / "val", per_class=1, size=(16, 16), seed=1)
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [
        *QUIET, "model=mlp", "data=image_folder", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}",
        "data.image_size=8", "data.batch_size=2", f"data.num_workers={workers}", "schedule=constant",
        "trainer.max_epochs=1", "trainer.checkpoint_every_n_steps=1", f"hydra.run.dir={run_dir}",
    ], check=False)
    cause = "OSError: Truncated File Read" if bad == "broken" else "UnidentifiedImageError: cannot identify image file"
    assert_one_error_line(proc, f"error: train item {index} ({path}): {cause}")
    assert_failed_after(run_dir, failing_update)


def test_validation_labels_follow_the_training_classes_by_name(tmp_path):
    from trainer.data import build_dataset

    write_image_folder(tmp_path / "train", per_class=2)
    write_image_folder(tmp_path / "val", per_class=3, seed=1)
    for image in (tmp_path / "val" / "cat").iterdir():
        image.unlink()
    (tmp_path / "val" / "cat").rmdir()  # validation holds dogs only: ImageFolder alone would label them 0
    cfg = compose_config("data=image_folder", f"data.train_dir={tmp_path / 'train'}",
                         f"data.val_dir={tmp_path / 'val'}", "data.num_workers=0", "data.image_size=8", base=QUIET)
    data = build_dataset(cfg.data, seed=0)
    assert data.val.classes == ["cat", "dog"] and data.val.targets == [1, 1, 1]
    assert [label for _, label in (data.val[k] for k in range(3))] == [1, 1, 1]


def test_a_validation_class_training_lacks_is_refused_before_anything_is_written(tmp_path):
    write_image_folder(tmp_path / "train", per_class=2)
    write_image_folder(tmp_path / "val", per_class=1, seed=1)
    (tmp_path / "val" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "bird" / "0.png")
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", [
        *QUIET, "model=mlp", "data=image_folder", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}",
        "data.image_size=8", "data.num_workers=0", f"hydra.run.dir={run_dir}",
    ], check=False)
    assert_one_error_line(proc, "error: data.val_dir: class folder(s) bird not among the training classes (cat, dog)")
    assert not run_dir.exists()


@pytest.mark.parametrize("train, val, message", [
    (faulty(SIZE), faulty(16, reshape_at=0),
     "error: data.val: item 0's input has shape (5,), but the training split's has (4,)"),
    (faulty(SIZE, label_at=0), faulty(16), "error: data.train: item 0's label 7 is outside 0..1"),
    (faulty(SIZE), faulty(16, label_at=0), "error: data.val: item 0's label 7 is outside 0..1"),
    (faulty(SIZE, raise_at=1), faulty(16), "error: data.train: item 1: RuntimeError: record 1 is corrupt"),
])
def test_what_item_0_and_1_show_is_refused_before_anything_is_written(tmp_path, train, val, message):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", torch_dataset_args(run_dir, train=train, val=val), check=False)
    assert_one_error_line(proc, message)
    assert not run_dir.exists()


BAD_TRAIN = {"raise_at": 37, "reshape_at": 40, "label_at": 50}


def skip_args(run_dir: Path, *, workers: int, max_skipped: int) -> list[str]:
    """Two epochs that skip 3 bad training examples per epoch and 1 bad validation example per validation."""
    return [*torch_dataset_args(run_dir, train=faulty(SIZE, **BAD_TRAIN), val=faulty(16, reshape_at=5), workers=workers),
            "trainer.max_epochs=2", "data.on_error=skip", f"data.max_skipped={max_skipped}"]


def skipped_by_update(epochs: int) -> dict[int, int]:
    """``data/skipped`` logged at each update (0-based): the distinct bad training examples read so
    far, and the one bad validation example from the first validation on (each counts once)."""
    counts, seen = {}, set()
    for epoch in range(epochs):
        order = epoch_order(SIZE, seed=0, epoch=epoch).tolist()
        for update in range(SIZE // BATCH):
            seen |= set(order[update * BATCH : (update + 1) * BATCH]) & set(BAD_TRAIN.values())
            counts[epoch * SIZE // BATCH + update] = len(seen)
        seen.add("val 5")  # the epoch's validation
    return counts


def test_skipped_examples_are_left_out_counted_and_logged(tmp_path):
    from trainer.rundir.events import read_scalars

    run_dir = tmp_path / "run"
    proc = run_cli("trainer", skip_args(run_dir, workers=2, max_skipped=10))
    assert "Traceback" not in proc.stderr
    # 3 bad training examples and 1 bad validation one, each once over 2 epochs and 2 validations
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["data/skipped"] == 3 + 1
    logged = dict(read_scalars(run_dir)["data/skipped"])
    expected = skipped_by_update(2)
    assert logged == expected and expected[0] < expected[15]  # a count that moves, not a constant


def test_more_skipped_examples_than_data_max_skipped_fail_the_run_naming_the_last(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer", skip_args(run_dir, workers=0, max_skipped=2), check=False)
    line = assert_one_error_line(proc, "more than data.max_skipped=2 examples skipped: fix the data, or raise "
                                       "data.max_skipped")
    assert line.startswith(("error: train item 37", "error: train item 40", "error: train item 50"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


def test_a_resumed_run_goes_on_counting_skipped_examples(tmp_path, monkeypatch):
    from tests.test_resume import preempt_after
    from trainer.app.run import train
    from trainer.errors import Preempted

    overrides = [arg for arg in skip_args(tmp_path, workers=0, max_skipped=10) if not arg.startswith("hydra.")]
    straight = train(compose_config(*overrides, base=[]), tmp_path / "straight")
    with monkeypatch.context() as patch:
        preempt_after(patch, 11)  # in epoch 1, after epoch 0's skips and its validation's
        with pytest.raises(Preempted):
            train(compose_config(*overrides, base=[]), tmp_path / "resumed")
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["controls"]["data_skips"]["skipped"]
    assert sorted(map(tuple, saved)) == [("train", 37), ("train", 40), ("train", 50), ("val", 5)]
    resumed = train(compose_config(*overrides, "trainer.resume=auto", base=[]), tmp_path / "resumed")
    assert straight["data/skipped"] == resumed["data/skipped"] == 4
    # a resume that lost what it had skipped would log a count that drops at update 11 and climbs again
    from trainer.rundir.events import read_scalars
    assert read_scalars(tmp_path / "resumed")["data/skipped"] == read_scalars(tmp_path / "straight")["data/skipped"]
