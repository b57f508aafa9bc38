"""Regression heads for ``finetune`` (``--task regression``): a number, or a row of numbers, per text or image instead
of a class, for a text or an image base alike.

* **Targets** are the data's own, in the formats the other tasks read: a table's label column (``label``, ``labels``,
  ``target``, ``class``) as numbers, one per row, beside its texts or its image paths (``path,label``); an image
  ``.npz``'s ``labels`` array (a number or a row of numbers per image). A folder of classes carries names, not
  numbers: refused. A cell that is no finite number is a one-line error naming the row; so are targets that never
  vary (nothing to learn).
* **The head** has one output per target (Hugging Face ``num_labels=k, problem_type="regression"``; timm
  ``num_classes=k``). Its bias starts at the training targets' mean, so the first steps start from the mean predictor
  instead of from 0 (targets are not rescaled: the model predicts them as they are). The loss is the mean squared
  error.
* **The metric** is validate's (:mod:`compress.tasks.values`): the mean absolute error, lower is better (the best
  checkpoint is the lowest); RMSE and R² of the chosen checkpoint beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import DataError

#: the name the eval metric is recorded under (validate's ``metric_name`` for regression)
METRIC = "mae"


def _number(value: Any, where: str) -> float:
    """A table cell as a finite number; anything else is a one-line error naming the row."""
    if hasattr(value, "item"):  # numpy scalars from pandas / pyarrow
        value = value.item()
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: no target", hint="--task regression needs a number in every row's label column")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: target {value!r} is not a number",
                        hint="--task regression reads a number per row (for class names use another --task)") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: target {value!r} is not a finite number", hint="fix or remove that row")
    return number


def _label_column(columns: list[str], names: tuple[str, ...], source: str) -> str:
    col = next((c for c in names if c in columns), None)
    if col is None:
        raise DataError(f"{source}: no target column (columns: {', '.join(columns) or '(none)'})",
                        hint=f"name the column of numbers one of {', '.join(names)}")
    return col


def table_targets(path: Path | str) -> np.ndarray:
    """The label column of a table of texts as numbers: ``[rows, 1]`` float32, in file order (the order
    :func:`compress.data.tables.load_dataset` reads the texts in)."""
    from compress.data.readers import open_table, split_path
    from compress.data.tables import LABEL_COLUMNS

    file, split = split_path(path)
    columns, rows = open_table(file, split, str(path))
    col = _label_column(columns, LABEL_COLUMNS, str(path))
    y = [_number(rec.get(col), f"{path}: row {row_no}") for row_no, _, rec in rows([col])]
    return _checked(np.asarray(y, dtype=np.float32)[:, None], str(path))


def image_targets(path: Path | str) -> tuple[list[Any], np.ndarray]:
    """The images of ``path`` (paths or arrays) and their targets, ``[images, outputs]`` float32: an ``.npz`` of
    ``images`` and ``labels`` (a number or a row per image), or a ``path,label`` table (relative paths read against the
    table's folder)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: a folder of classes carries class names, not numbers",
                        hint="give regression targets as a path,label table or an .npz with a labels array of numbers")
    if p.suffix.lower() == ".npz":
        from compress.data.images import load_image_dataset

        ds = load_image_dataset(p)  # without class names its labels stay numbers
        if ds.labels is None:
            raise DataError(f"{p}: no 'labels' array", hint="np.savez(f, images=..., labels=float_targets)")
        try:
            y = np.asarray(ds.labels, dtype=np.float32)
        except ValueError:
            y = np.asarray([np.nan])
        if not np.isfinite(y).all():
            raise DataError(f"{p}: 'labels' holds values that are not finite numbers",
                            hint="--task regression reads a number (or a row of numbers) per image")
        return ds.items, _checked(y.reshape(len(y), -1), str(p))
    from compress.data.image_files import LABEL_COLUMNS, PATH_COLUMNS
    from compress.data.readers import open_table

    columns, rows = open_table(p, None, str(p))
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DataError(f"{p}: no path column (columns: {', '.join(columns) or '(none)'})",
                        hint=f"name the column with the image paths one of: {', '.join(PATH_COLUMNS)}")
    col = _label_column(columns, LABEL_COLUMNS, str(p))
    items, y = [], []
    for row_no, _, rec in rows([path_col, col]):
        where = f"{p}: row {row_no}"
        value = str(rec.get(path_col) or "").strip()
        image = Path(value) if Path(value).is_absolute() else p.parent / value
        if not value or not image.is_file():
            raise DataError(f"{where}: no image {value!r}" if value else f"{where}: empty {path_col}",
                            hint="check the path (relative paths are read against the table's folder)")
        items.append(image)
        y.append(_number(rec.get(col), where))
    return items, _checked(np.asarray(y, dtype=np.float32)[:, None], str(p))


def _checked(y: np.ndarray, source: str) -> np.ndarray:
    if len(y) == 0:
        raise DataError(f"{source}: no rows", hint="one row per sample with its target")
    return y


def check_targets(y: np.ndarray, source: str) -> None:
    """Training targets must vary: a constant is learnt by the bias alone, and every metric of it is degenerate."""
    if np.ptp(y, axis=0).max() == 0:
        raise DataError(f"{source}: every target is {float(y.flat[0]):g}: a regressor needs targets that vary",
                        hint="train on data whose targets differ")


def target_record(y: np.ndarray) -> dict[str, Any]:
    """What the training targets were (recorded in the step's metrics)."""
    return {"outputs": int(y.shape[1]), "mean": [float(v) for v in y.mean(0)], "std": [float(v) for v in y.std(0)],
            "min": [float(v) for v in y.min(0)], "max": [float(v) for v in y.max(0)]}


def init_head_bias(model, mean: np.ndarray) -> bool:
    """Set the new head's bias (the last linear layer with one output per target) to the targets' ``mean``; False
    when there is none with a bias."""
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(mean)]
    if not heads or heads[-1].bias is None:
        return False
    with torch.no_grad():
        heads[-1].bias.copy_(torch.as_tensor(mean, dtype=heads[-1].bias.dtype))
    return True


def mse(outputs, targets):
    """The training loss: mean squared error of the outputs (``[batch, outputs]``) against the targets."""
    import torch.nn.functional as F

    return F.mse_loss(outputs.float().reshape(targets.shape), targets)


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² (averaged over the outputs) as validate computes them with scikit-learn's metrics."""
    pred, y = pred.reshape(y.shape).astype(np.float64), y.astype(np.float64)
    err = pred - y
    ss_res, ss_tot = (err ** 2).sum(0), ((y - y.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "r2": float(r2.mean())}


def mae_metric(outputs, y: np.ndarray):
    """The eval metric for the loop: ``outputs(model)`` (the eval rows' outputs, numpy) against the targets ``y``."""
    return lambda model: scores(outputs(model), y)["mae"]


class TargetRows:
    """Tokenised rows with a target each: ``collate`` gives the rows' batch, its ``labels`` the targets (float32,
    ``[batch, outputs]``) in place of class ids."""

    def __init__(self, rows, y: np.ndarray) -> None:
        import torch

        self.rows, self.y, self.targets = rows, y, torch.as_tensor(y, dtype=torch.float32)
        self.lengths = rows.lengths

    def __len__(self) -> int:
        return len(self.y)

    def collate(self, idx: list[int]) -> dict[str, Any]:
        batch = self.rows.collate(idx)
        batch["labels"] = self.targets[list(idx)]
        return batch

    def outputs(self, model, batch_size: int = 64) -> np.ndarray:
        """The model's outputs on every row, in order."""
        import torch

        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for i in range(0, len(self), batch_size):
                batch = self.rows.collate(list(range(i, min(i + batch_size, len(self)))))
                feed = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "index")}
                out.append(model(**feed).logits.float().cpu().numpy())
        return np.concatenate(out)
