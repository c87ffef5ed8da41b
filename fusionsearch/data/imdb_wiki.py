"""IMDB-WIKI faces with age and gender labels, filtered and split the way NDDR-CNN Sec. 5.2 uses them.

Layout read (Rothe et al., DEX; https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/): ``root`` is the
extracted ``imdb_crop/`` (or ``wiki_crop/``, or the full-image ``imdb/`` / ``wiki/``) folder, or its
parent::

    root/imdb.mat  (or root/imdb_crop/imdb.mat, root/imdb/imdb.mat; likewise wiki.mat)
    root/<full_path>  e.g. root/01/nm0000001_rm124825600_1899-5-10_1968.jpg, paths relative to the .mat's folder

The .mat holds one MATLAB struct named ``imdb`` (``wiki``) whose fields are 1 x N arrays, read with
``scipy.io.loadmat`` as ``mat["imdb"][0, 0][field][0]``:

    dob                MATLAB serial date number of the birth date
    photo_taken        year the photo was taken
    full_path          cell of relative jpg paths
    gender             1 male, 0 female, NaN unknown
    name               cell of names (an empty cell when unknown)
    face_location      cell of [x1 y1 x2 y2], MATLAB 1-based: img(y1:y2, x1:x2, :)
    face_score         detector score, -Inf when no face was found
    second_face_score  score of the second face, NaN when there is none
    celeb_names, celeb_id  (imdb only) the celebrity list and each row's index into it

Age is DEX's: whole years from the birth date to 1 July of ``photo_taken`` (the photo is assumed taken
mid-year; ``[age,~] = datevec(datenum(photo_taken,7,1) - dob)`` in the DEX README), i.e.
``photo_taken - birth_year``, minus one when the birthday falls after 1 July. MATLAB datenum d is the
date ``datetime.fromordinal(d - 366)``.

Kept rows (NDDR-CNN: drop images with more than one face and images without age or gender): exactly one
face (finite ``face_score``, NaN ``second_face_score``), ``face_score >= min_face_score`` when that is
given, gender 0 or 1, age in 0..99. The paper then holds out whole subjects (2000 of 12325 for
evaluation); here each subject (``celeb_id`` for imdb, ``name`` for wiki, the file name's id prefix when
the name is empty) goes to train / val / test by a seeded hash, so no person is in two splits and the
split does not depend on file order. Image files are checked when read, not up front (500k stat calls).

Items: ``{"image": float32 (3, S, S) ImageNet-normalised, "age": int64 0..99, "gender": int64 0 female /
1 male}``; ``crop_face`` crops to ``face_location`` widened by ``margin`` (DEX: 40 %) on every side.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fusionsearch.data.base import MultiTaskDataset, register_dataset
from fusionsearch.data.transforms import DataError, MissingDataError, as_hw, check_root, normalize_image
from fusionsearch.errors import ArgumentError

__all__ = [
    "IMDBWiki",
    "FaceTable",
    "SPLITS",
    "dex_age",
    "face_box",
    "find_metadata",
    "read_metadata",
    "subject_splits",
    "usable_rows",
]

SPLITS = ("train", "val", "test")
SOURCES = ("imdb", "wiki")
_DATENUM_1970 = 719529  # MATLAB datenum(1970, 1, 1)
_FIELDS = ("dob", "photo_taken", "full_path", "gender", "name", "face_location", "face_score", "second_face_score")


class FaceTable(NamedTuple):
    """Every row of one IMDB-WIKI .mat, as parallel arrays (length N)."""

    path: np.ndarray  # str, relative to the .mat's folder
    age: np.ndarray  # int64, DEX age; -1 where dob is not a number
    gender: np.ndarray  # float64: 0, 1 or NaN
    face_score: np.ndarray  # float64
    second_face_score: np.ndarray  # float64
    face_location: np.ndarray  # float64 (N, 4): x1, y1, x2, y2, MATLAB 1-based
    subject: np.ndarray  # str: who is in the photo


def dex_age(dob: np.ndarray, photo_taken: np.ndarray) -> np.ndarray:
    """Age in whole years on 1 July of ``photo_taken`` for MATLAB datenums ``dob``; -1 where dob is NaN."""
    dob = np.asarray(dob, dtype=np.float64)
    finite = np.isfinite(dob)
    days = np.floor(np.where(finite, dob, _DATENUM_1970)).astype(np.int64) - _DATENUM_1970
    born = np.datetime64("1970-01-01", "D") + days.astype("timedelta64[D]")
    month_start = born.astype("datetime64[M]")
    year = born.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day = (born - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    after_july_1 = (month > 7) | ((month == 7) & (day > 1))
    age = np.asarray(photo_taken, dtype=np.int64) - year - after_july_1
    return np.where(finite, age, -1)


def find_metadata(root: Path, source: str | None = None) -> tuple[Path, str]:
    """The .mat under ``root`` and its source (``"imdb"`` or ``"wiki"``); imdb wins when both are there."""
    if source is not None and source not in SOURCES:
        raise ArgumentError(f"source must be one of {', '.join(SOURCES)} or None, got {source!r}")
    tried = []
    for src in (source,) if source else SOURCES:
        for path in (root / f"{src}.mat", root / f"{src}_crop" / f"{src}.mat", root / src / f"{src}.mat"):
            if path.is_file():
                return path, src
            tried.append(repr(str(path)))
    raise MissingDataError(f"no IMDB-WIKI metadata under {str(root)!r}: none of {', '.join(tried)} exists")


def _strings(cells: np.ndarray) -> np.ndarray:
    """A MATLAB cell of strings (each cell a 1-element array, or empty) -> str array, '' for empty."""
    out = [str(np.ravel(c)[0]) if np.size(c) and np.ravel(c).dtype.kind in "US" else "" for c in cells]
    return np.array(out, dtype=object)


def _boxes(cells: np.ndarray) -> np.ndarray:
    boxes = np.full((len(cells), 4), np.nan)
    for i, c in enumerate(cells):
        if np.size(c) == 4:
            boxes[i] = np.ravel(c).astype(np.float64)
    return boxes


def _subjects(struct: np.ndarray, names: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """celeb_id where the struct has one (imdb), else the name; rows with neither fall back to the
    file name's leading id (``nm0000001_...`` / ``10000217_...``), which is per person too."""
    if "celeb_id" in (struct.dtype.names or ()):
        ids = np.ravel(struct["celeb_id"]).astype(np.int64)
        return np.array([f"id:{i}" for i in ids], dtype=object)
    return np.array(
        [f"name:{n}" if n else f"file:{Path(p).name.split('_', 1)[0]}" for n, p in zip(names, paths)], dtype=object
    )


def read_metadata(mat_path: Path, source: str) -> FaceTable:
    """All rows of ``mat_path`` (struct ``source``); DataError naming the file when the struct or a
    field is missing or the fields disagree in length."""
    from scipy.io import loadmat  # imported here: only IMDB-WIKI needs scipy, and it is slow to import

    try:
        mat = loadmat(mat_path)
    except (OSError, ValueError, NotImplementedError) as e:
        raise DataError(f"cannot read IMDB-WIKI metadata {str(mat_path)!r}: {e}") from e
    if source not in mat:
        structs = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{str(mat_path)!r} has no struct {source!r} (it has {structs})")
    struct = mat[source]
    if struct.dtype.names is None or struct.size != 1:
        raise DataError(f"{str(mat_path)!r}: {source!r} is not a 1 x 1 MATLAB struct")
    struct = struct.reshape(-1)[0]
    missing = [f for f in _FIELDS if f not in (struct.dtype.names or ())]
    if missing:
        raise DataError(f"{str(mat_path)!r}: struct {source!r} lacks the field(s) {', '.join(missing)}")
    col = {f: np.ravel(struct[f]) for f in _FIELDS}
    lengths = {f: len(v) for f, v in col.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{str(mat_path)!r}: fields of {source!r} differ in length: {lengths}")
    paths: Any = _strings(col["full_path"])
    names: Any = _strings(col["name"])
    return FaceTable(
        path=paths,
        age=dex_age(col["dob"], col["photo_taken"]),
        gender=col["gender"].astype(np.float64),
        face_score=col["face_score"].astype(np.float64),
        second_face_score=col["second_face_score"].astype(np.float64),
        face_location=_boxes(col["face_location"]),
        subject=_subjects(struct, names, paths),
    )


@functools.lru_cache(maxsize=4)
def _cached_metadata(path: str, mtime_ns: int, size: int, source: str) -> FaceTable:
    """Parsing imdb.mat takes seconds; train, val and test of one run share one parse."""
    return read_metadata(Path(path), source)


def usable_rows(table: FaceTable, min_face_score: float | None = None) -> np.ndarray:
    """Boolean mask of the NDDR-CNN rows: one face, known gender, age 0..99 (and a score floor if given)."""
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(table.face_score) & np.isnan(table.second_face_score)
        if min_face_score is not None:
            keep &= table.face_score >= min_face_score
        keep &= (table.gender == 0) | (table.gender == 1)
    keep &= (table.age >= 0) & (table.age <= 99)
    keep &= np.array([bool(p) for p in table.path], dtype=bool)
    return keep


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def subject_splits(subjects: np.ndarray, fractions: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per row, one per subject: a seeded hash of the subject id
    against the cumulative fractions, so a person's photos never straddle splits and the assignment
    is the same on every machine and for every file order."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ArgumentError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    unique, inverse = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    u = np.array([_unit_hash(s, seed) for s in unique])
    bounds = np.cumsum(fractions)[:-1]
    return np.searchsorted(bounds, u, side="right")[inverse.reshape(-1)]


def face_box(location: np.ndarray, image_size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) of a MATLAB [x1 y1 x2 y2] face widened by ``margin`` of
    its width / height on each side, clipped to the image; the whole image when the box is unusable."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in location)
    left, top, right, bottom = x1 - 1, y1 - 1, x2, y2  # 1-based inclusive -> 0-based half-open
    if not all(math.isfinite(v) for v in (left, top, right, bottom)) or right <= left or bottom <= top:
        return 0, 0, width, height
    mx, my = margin * (right - left), margin * (bottom - top)
    box = (
        max(0, round(left - mx)),
        max(0, round(top - my)),
        min(width, round(right + mx)),
        min(height, round(bottom + my)),
    )
    return box if box[2] > box[0] and box[3] > box[1] else (0, 0, width, height)


@register_dataset("imdb_wiki")
class IMDBWiki(MultiTaskDataset):
    """IMDB-WIKI: age (100 classes) and gender, split by subject.

    IMDB-WIKI age (100 classes, 0..99) and gender (2 classes); see the module docstring for the
    files read, the filter and the subject-disjoint split.

    ``size`` is the output (H, W) (None keeps each image's own size, which cannot be batched);
    ``augment`` (default: on for train) flips left-right with p = 0.5 from torch's global RNG,
    which the training loader seeds per item (``train.item_seed``); ``length`` keeps the first N
    samples of the split.
    """

    tasks: dict[str, int] = {"age": 100, "gender": 2}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        source: str | None = None,
        size: int | tuple[int, int] | None = 224,
        augment: bool | None = None,
        length: int | None = None,
        crop_face: bool = True,
        margin: float = 0.4,
        min_face_score: float | None = None,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ArgumentError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if length is not None and length < 1:
            raise ArgumentError(f"length must be positive, got {length}")
        if margin < 0:
            raise ArgumentError(f"margin must be >= 0, got {margin}")
        self.root = check_root(root, "IMDB-WIKI")
        self.mat_path, self.source = find_metadata(self.root, source)
        self.image_root = self.mat_path.parent
        stat = self.mat_path.stat()
        table = _cached_metadata(str(self.mat_path.resolve()), stat.st_mtime_ns, stat.st_size, self.source)
        keep = usable_rows(table, min_face_score)
        parts = (float(fractions[0]), float(fractions[1]), float(fractions[2]))
        in_split = subject_splits(table.subject, parts, seed) == SPLITS.index(split)
        rows = np.flatnonzero(keep & in_split)
        if length is not None:
            rows = rows[:length]
        self.split = split
        self.rows = rows  # row numbers in the .mat, for error messages and cross-referencing
        self.paths = table.path[rows]
        self.ages = table.age[rows]
        self.genders = table.gender[rows].astype(np.int64)
        self.subjects = table.subject[rows]
        self.face_locations = table.face_location[rows]
        self.size = as_hw(size)
        self.augment = split == "train" if augment is None else bool(augment)
        self.crop_face = crop_face
        self.margin = float(margin)

    def __len__(self) -> int:
        return len(self.rows)

    def item_ids(self) -> list[str]:
        """Each sample's image path as the metadata stores it (``data.labelled`` lists them)."""
        return [str(p) for p in self.paths]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``, face-cropped if asked, not resized."""
        path = self.image_root / self.paths[index]
        if not path.is_file():
            raise MissingDataError(
                f"IMDB-WIKI image {str(path)!r} (row {int(self.rows[index])} of {str(self.mat_path)!r}) does not exist"
            )
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read IMDB-WIKI image {str(path)!r}: {e}") from e
        if self.crop_face:
            image = image.crop(face_box(self.face_locations[index], image.size, self.margin))
        return image

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} IMDB-WIKI samples")
        image = self.load_image(index)
        if self.size is not None and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.augment and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return {
            "image": normalize_image(x),
            "age": torch.tensor(int(self.ages[index]), dtype=torch.int64),
            "gender": torch.tensor(int(self.genders[index]), dtype=torch.int64),
        }
