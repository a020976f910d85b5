"""Registration of a received image to a toy-world scene region (for the SIMULATED MODELS).

TEST DOUBLE / OFFLINE DEMO. The simulated models get exactly what a real model gets: pixels in a
chat request. To answer from the ground truth they must first work out which scene and which
region of it they are looking at, and at what scale; this module does that from the pixels only.

Handled inputs (what the pipeline and the evaluation send):

* a whole scene, resized to any size, possibly JPEG-compressed, possibly with the pipeline's red
  rectangle drawn on it -> matched by aspect ratio plus a 32x32 thumbnail nearest neighbour over
  all scenes, with thumbnail cells touched by red pixels ignored;
* a crop of a scene around an object (the pipeline crops segmenter boxes, i.e. object boxes,
  possibly clamped or expanded a few percent, and upscales them 2x with Lanczos) or a benchmark
  crop at native scale -> matched against an index of candidate regions (every object box at
  several expansions, every benchmark crop box) in three steps: aspect ratio plus a coarse 10x10
  thumbnail over all candidates; a blurred 20x20 thumbnail, tolerant to a one-cell shift, over
  the best 24; then, for the few that remain close, a comparison at (up to) native resolution
  against a stored patch around the object, with a +-2 px shift search. Ties between regions
  that look the same at any size (a flat-colored square) go to the candidate whose zoom factor
  is one pipelines use (1x, 2x).

Thumbnails are area averages (``BOX`` filter), which makes a 2x Lanczos upscale and the original
region nearly identical at thumbnail size, and makes JPEG noise average out. The red box is
found from reddish pixels (R > 110 and G, B < 0.4 R: a superset of the pipeline's pure red that
survives JPEG and moderate downscaling, down to about 1/3 of the scene size for a 5 px line);
the toy world never draws such colors. Anything that matches nothing closely enough is reported
as unrecognised (``None``). Typical cost: ~12 ms for a full scene, ~5 ms for a crop.

The index is cached in ``<world>/vision_index.npz`` (rebuilt when ``index.json`` changes).
"""

from __future__ import annotations

import hashlib
import math
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .world import Scene, World

__all__ = ["Registration", "SceneRegistry", "find_red_box", "load_registry", "red_mask"]

VISION_VERSION = 8
FULL_THUMB = 32
COARSE_THUMB = 10
FINE_THUMB = 20
#: Expansions (fraction of width/height per side) of object boxes indexed as crop candidates.
EXPANSIONS = (0.0, 0.03, 0.06, 0.1, 0.15)
#: Acceptance thresholds on the mean absolute thumbnail difference (0-255 scale).
FULL_ACCEPT = 14.0
CROP_ACCEPT = 15.0
_RERANK = 24
_VERIFY = 6
PATCH_MAX = 96.0
_NICE_SCALES = np.array([1.0, 2.0])
_CACHE_NAME = "vision_index.npz"

BoxF = tuple[float, float, float, float]


@dataclass(frozen=True)
class Registration:
    """Where a received image comes from.

    ``region`` is the scene area shown (scene pixels, x0, y0, x1, y1); ``scale`` is received
    pixels per scene pixel; ``red_box`` is the red rectangle's outer box in scene pixels (or None);
    ``kind`` is ``"full"`` or ``"crop"``; ``distance`` is the thumbnail distance of the match.
    """

    scene_id: str
    region: BoxF
    scale: float
    red_box: BoxF | None
    kind: str
    distance: float


def red_mask(arr: np.ndarray) -> np.ndarray:
    """Boolean mask of reddish pixels (the pipeline's red box) of an RGB uint8 array.

    A ratio test (G and B below 0.4 R) rather than fixed levels: pure red blended with a light
    background by resizing or JPEG keeps a low G/R, while blends of the toy palette (orange with
    black, say) never go below G/R = 0.42. Same rule as :func:`r2i.toy.world.is_reddish`.
    """
    r = arr[..., 0].astype(np.int16)
    lim = (r * 2) // 5
    return (r > 110) & (arr[..., 1] < lim) & (arr[..., 2] < lim)


def find_red_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Outer box (x0, y0, x1, y1, exclusive) of a red rectangle in ``mask``, or None.

    Rows/columns with a single red pixel are ignored (JPEG speckle), and the candidate must look
    like a rectangle outline: its top and bottom bands must be mostly red.
    """
    if int(mask.sum()) < 8:
        return None
    rows = mask.sum(axis=1)
    cols = mask.sum(axis=0)
    # the top/bottom edges are the fullest rows, the left/right edges the fullest columns
    ys = np.nonzero(rows >= max(2, 0.5 * rows.max()))[0]
    xs = np.nonzero(cols >= max(2, 0.5 * cols.max()))[0]
    if len(ys) == 0 or len(xs) == 0:
        return None
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    return x0, y0, x1, y1


def _refine_red_box(img: Image.Image, coarse: Sequence[int], k: int) -> tuple[int, int, int, int]:
    """Full-resolution red box from one found on a k-times reduced image."""
    w, h = img.size
    win = (max(0, coarse[0] * k - 2 * k), max(0, coarse[1] * k - 2 * k),
           min(w, coarse[2] * k + 2 * k), min(h, coarse[3] * k + 2 * k))
    fine = find_red_box(red_mask(np.asarray(img.crop(win))))
    if fine is None:
        return coarse[0] * k, coarse[1] * k, coarse[2] * k, coarse[3] * k
    return fine[0] + win[0], fine[1] + win[1], fine[2] + win[0], fine[3] + win[1]


def _thumb(img: Image.Image, n: int, box: Sequence[float] | None = None) -> np.ndarray:
    kw = {} if box is None else {"box": tuple(float(v) for v in box)}
    return np.asarray(img.resize((n, n), Image.Resampling.BOX, **kw), dtype=np.uint8)


def _valid_cells(mask_img: Image.Image | None, n: int) -> np.ndarray | None:
    """Cells free of red pixels (None: all cells valid)."""
    if mask_img is None:
        return None
    return np.asarray(mask_img.resize((n, n), Image.Resampling.BOX)) == 0


def _blur(t: np.ndarray) -> np.ndarray:
    """3x3 box blur of thumbnails (..., n, n, 3), edge-replicated, as int16.

    Comparing blurred thumbnails tolerates sub-cell misalignment (a box expanded a little more or
    less than the indexed one, resampling differences on tiny regions).
    """
    a = t.astype(np.int32)
    pad = [(0, 0)] * (a.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    p = np.pad(a, pad, mode="edge")
    h, w = a.shape[-3], a.shape[-2]
    acc = sum(p[..., dy : dy + h, dx : dx + w, :] for dy in range(3) for dx in range(3))
    return (acc // 9).astype(np.int16)


def _blur2d(a: np.ndarray) -> np.ndarray:
    """3x3 box blur of one (h, w, 3) image (resampling-robust pixel comparisons)."""
    return _blur(a[None])[0]


def _shift_distances(cands: np.ndarray, q: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Like :func:`_distances` on blurred thumbnails, minimised over +-1 cell shifts."""
    n = q.shape[0]
    core = slice(1, n - 1)
    qc = q[core, core]
    vc = None if valid is None else valid[core, core]
    best = np.full(len(cands), np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            win = cands[:, 1 + dy : n - 1 + dy, 1 + dx : n - 1 + dx]
            best = np.minimum(best, _distances(win, qc, vc))
    return best


def _distances(cands: np.ndarray, q: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Mean absolute difference between each candidate thumbnail and the query, over valid cells."""
    diff = np.abs(cands.astype(np.int16) - q.astype(np.int16)[None])
    if diff.ndim == 4 and valid is None:
        return diff.mean(axis=(1, 2, 3))
    if valid is None:
        return diff.reshape(len(cands), -1).mean(axis=1)
    if not valid.any():
        return np.full(len(cands), np.inf)
    return diff[:, valid].reshape(len(cands), -1).mean(axis=1)


def _expand(box: Sequence[float], frac: float, w: int, h: int) -> BoxF:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * frac, (y1 - y0) * frac
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible (fixed zip timestamps), so a regenerated world is
    identical file for file and Snakemake/caches see no spurious change."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def _index_key(world_dir: Path) -> str:
    blob = (world_dir / "index.json").read_bytes()
    return hashlib.sha256(blob + f"vision-v{VISION_VERSION}".encode()).hexdigest()


class SceneRegistry:
    """Thumbnail index of a toy world; :meth:`register` locates a received image in it."""

    def __init__(self, world_dir: str | Path, world: World | None = None) -> None:
        self.root = Path(world_dir)
        self.world = world if world is not None else World.load(self.root)
        self.scene_ids: list[str] = list(self.world.scenes)
        key = _index_key(self.root)
        arrays = self._load_cache(key)
        if arrays is None:
            arrays = self._compute()
            self._save_cache(key, arrays)
        self._full = arrays["full"]
        self._full_log_aspect = arrays["full_log_aspect"]
        self._cand_scene = arrays["cand_scene"]
        self._cand_box = arrays["cand_box"]
        self._cand_log_aspect = arrays["cand_log_aspect"]
        self._cand_coarse = arrays["cand_coarse"]
        self._cand_fine = arrays["cand_fine"]
        self._cand_patch = arrays["cand_patch"]
        self._patch_box = arrays["patch_box"]
        self._patch_dims = arrays["patch_dims"]
        self._patch_offset = arrays["patch_offset"]
        self._patch_data = arrays["patch_data"]

    @classmethod
    def build(cls, world_dir: str | Path) -> SceneRegistry:
        """Build (and cache on disk) the index of a freshly generated world."""
        return cls(world_dir)

    def scene(self, scene_id: str) -> Scene:
        return self.world.scenes[scene_id]

    # -- index ---------------------------------------------------------------------------------

    def _load_cache(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.root / _CACHE_NAME
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key or list(data["scene_ids"]) != self.scene_ids:
                    return None
                return {k: data[k] for k in data.files}
        except (OSError, KeyError, ValueError):
            return None

    def _save_cache(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self.root / _CACHE_NAME
        tmp = path.with_name(f".{_CACHE_NAME}.{threading.get_ident()}.tmp.npz")
        try:
            _save_npz(tmp, {"key": np.array(key), "scene_ids": np.array(self.scene_ids), **arrays})
            tmp.replace(path)
        except OSError:  # read-only world dir: keep the in-memory index
            tmp.unlink(missing_ok=True)

    def _compute(self) -> dict[str, np.ndarray]:
        full, full_aspect = [], []
        c_scene: list[int] = []
        c_box: list[BoxF] = []
        c_patch: list[int] = []
        c_coarse, c_fine = [], []
        p_box: list[BoxF] = []
        p_dims: list[tuple[int, int]] = []
        p_data: list[np.ndarray] = []
        for si, sid in enumerate(self.scene_ids):
            scene = self.world.scenes[sid]
            with Image.open(self.world.image_path(sid)) as im:
                img = im.convert("RGB")
            full.append(_thumb(img, FULL_THUMB))
            full_aspect.append(np.log(scene.width / scene.height))
            boxes: list[tuple[BoxF, int]] = []
            patch_of: dict[str, int] = {}
            for o in scene.objects:
                # one native-resolution patch per object (with margin) verifies every candidate
                # box around it; big objects are stored downscaled (they are easy to tell apart)
                x0, y0, x1, y1 = o.bbox
                mx, my = max(16, math.ceil(0.3 * (x1 - x0))), max(16, math.ceil(0.3 * (y1 - y0)))
                pb = (float(max(0, x0 - mx)), float(max(0, y0 - my)),  # integer: no resampling
                      float(min(scene.width, x1 + mx)), float(min(scene.height, y1 + my)))
                f = min(1.0, PATCH_MAX / max(pb[2] - pb[0], pb[3] - pb[1]))
                dims = (max(2, round((pb[2] - pb[0]) * f)), max(2, round((pb[3] - pb[1]) * f)))
                patch_of[o.id] = len(p_box)
                p_box.append(pb)
                p_dims.append(dims)
                patch = np.asarray(img.resize(dims, Image.Resampling.BOX, box=pb), dtype=np.uint8)
                p_data.append(_blur2d(patch).astype(np.uint8).reshape(-1))  # stored pre-blurred
                boxes += [(_expand(o.bbox, e, scene.width, scene.height), patch_of[o.id])
                          for e in EXPANSIONS]
            boxes += [(tuple(float(v) for v in q["bbox"]), patch_of[q["object_id"]])
                      for q in scene.questions if "bbox" in q and q.get("object_id") in patch_of]
            for box, pi in dict.fromkeys(boxes):
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                c_scene.append(si)
                c_box.append(box)
                c_patch.append(pi)
                c_coarse.append(_thumb(img, COARSE_THUMB, box))
                c_fine.append(_thumb(img, FINE_THUMB, box))
        boxes_arr = np.array(c_box, dtype=np.float32).reshape(-1, 4)
        sizes = np.array([len(d) for d in p_data], dtype=np.int64)
        return {
            "full": np.array(full, dtype=np.uint8).reshape(-1, FULL_THUMB, FULL_THUMB, 3),
            "full_log_aspect": np.array(full_aspect, dtype=np.float64),
            "cand_scene": np.array(c_scene, dtype=np.int32),
            "cand_box": boxes_arr,
            "cand_patch": np.array(c_patch, dtype=np.int32),
            "cand_log_aspect": np.log((boxes_arr[:, 2] - boxes_arr[:, 0])
                                      / np.maximum(boxes_arr[:, 3] - boxes_arr[:, 1], 1e-6)),
            "cand_coarse": np.array(c_coarse, dtype=np.uint8).reshape(-1, COARSE_THUMB, COARSE_THUMB, 3),
            "cand_fine": _blur(np.array(c_fine, dtype=np.uint8).reshape(-1, FINE_THUMB, FINE_THUMB, 3)),
            "patch_box": np.array(p_box, dtype=np.float64).reshape(-1, 4),
            "patch_dims": np.array(p_dims, dtype=np.int32).reshape(-1, 2),
            "patch_offset": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "patch_data": np.concatenate(p_data) if p_data else np.zeros(0, np.uint8),
        }

    def _patch(self, pi: int) -> np.ndarray:
        w, h = (int(v) for v in self._patch_dims[pi])
        a, b = int(self._patch_offset[pi]), int(self._patch_offset[pi + 1])
        return self._patch_data[a:b].reshape(h, w, 3)

    def _verify(self, img: Image.Image, mask_img: Image.Image | None, ci: int) -> float:
        """Mean abs difference at (at most) native resolution between the received image and
        candidate ``ci``'s region, minimised over +-2 px shifts (the candidate box is only
        approximately the region that was cropped)."""
        pi = int(self._cand_patch[ci])
        pb = self._patch_box[pi]
        pw, ph = (int(v) for v in self._patch_dims[pi])
        fx, fy = pw / (pb[2] - pb[0]), ph / (pb[3] - pb[1])
        bx = self._cand_box[ci].astype(np.float64)
        tw = max(2, round((bx[2] - bx[0]) * fx))
        th = max(2, round((bx[3] - bx[1]) * fy))
        q = _blur2d(np.asarray(img.resize((tw, th), Image.Resampling.BOX), dtype=np.int16))
        valid = None
        if mask_img is not None:
            valid = np.asarray(mask_img.resize((tw, th), Image.Resampling.BOX)) == 0
        patch = self._patch(pi).astype(np.int16)
        bx0, by0 = round((bx[0] - pb[0]) * fx), round((bx[1] - pb[1]) * fy)
        best = np.inf
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                x0, y0 = bx0 + dx, by0 + dy
                ox0, oy0 = max(0, x0), max(0, y0)
                ox1, oy1 = min(pw, x0 + tw), min(ph, y0 + th)
                if (ox1 - ox0) * (oy1 - oy0) < 0.8 * tw * th:
                    continue
                # skip a 1 px rim: the blur mixes in different neighbours there
                sy, sx = slice(oy0 + 1, oy1 - 1), slice(ox0 + 1, ox1 - 1)
                qy, qx = slice(oy0 + 1 - y0, oy1 - 1 - y0), slice(ox0 + 1 - x0, ox1 - 1 - x0)
                diff = np.abs(patch[sy, sx] - q[qy, qx])
                if diff.size == 0:
                    continue
                if valid is not None:
                    v = valid[qy, qx]
                    if not v.any():
                        continue
                    diff = diff[v]
                best = min(best, float(diff.mean()))
        return best

    # -- registration --------------------------------------------------------------------------

    def register(self, image: Image.Image) -> Registration | None:
        """Locate ``image`` in the world: full scene first, then crop candidates; None if neither."""
        img = image if image.mode == "RGB" else image.convert("RGB")
        w, h = img.size
        if w < 4 or h < 4:
            return None
        # Work on a box-reduced copy (a 5 px red line still leaves >= 75 % red blocks at k <= 4);
        # thumbnails are box averages anyway, so nothing is lost for matching.
        k = max(1, min(4, min(w, h) // 600))
        small = img.reduce(k) if k > 1 else img
        red = red_mask(np.asarray(small))
        red_recv = find_red_box(red) if red.any() else None
        mask_img = None
        if red_recv is not None:
            mask_img = Image.fromarray(red.astype(np.uint8) * 255)
            if k > 1:
                red_recv = _refine_red_box(img, red_recv, k)

        got = self._match_full(small, mask_img)
        if got is None:
            got = self._match_crop(small, mask_img, (w, h))
        if got is None:
            return None
        si, region, dist, kind = got
        rw, rh = region[2] - region[0], region[3] - region[1]
        scale = 0.5 * (w / rw + h / rh)
        red_box: BoxF | None = None
        if red_recv is not None:
            sx, sy = w / rw, h / rh
            red_box = (region[0] + red_recv[0] / sx, region[1] + red_recv[1] / sy,
                       region[0] + red_recv[2] / sx, region[1] + red_recv[3] / sy)
        return Registration(self.scene_ids[si], region, float(scale), red_box, kind, float(dist))

    def _match_full(self, img: Image.Image, mask_img: Image.Image | None
                    ) -> tuple[int, BoxF, float, str] | None:
        w, h = img.size
        tol = 1.5 / min(w, h) + 0.005
        cand = np.nonzero(np.abs(self._full_log_aspect - np.log(w / h)) <= tol)[0]
        if len(cand) == 0:
            return None
        q = _thumb(img, FULL_THUMB)
        d = _distances(self._full[cand], q, _valid_cells(mask_img, FULL_THUMB))
        best = int(np.argmin(d))
        if d[best] > FULL_ACCEPT:
            return None
        si = int(cand[best])
        scene = self.world.scenes[self.scene_ids[si]]
        return si, (0.0, 0.0, float(scene.width), float(scene.height)), float(d[best]), "full"

    def _match_crop(self, img: Image.Image, mask_img: Image.Image | None,
                    recv_size: tuple[int, int]) -> tuple[int, BoxF, float, str] | None:
        w, h = recv_size  # ``img`` may be box-reduced; the zoom factor refers to what was sent
        cand = np.nonzero(np.abs(self._cand_log_aspect - np.log(w / h)) <= 0.15)[0]
        if len(cand) == 0:
            return None
        q1 = _thumb(img, COARSE_THUMB)
        d1 = _distances(self._cand_coarse[cand], q1, _valid_cells(mask_img, COARSE_THUMB))
        top = cand[np.argsort(d1, kind="stable")[:_RERANK]]
        q2 = _blur(_thumb(img, FINE_THUMB))
        d2 = _shift_distances(self._cand_fine[top], q2, _valid_cells(mask_img, FINE_THUMB))
        order = np.argsort(d2, kind="stable")[:_VERIFY]
        # verify only those whose thumbnails are about as close as the best one
        order = order[d2[order] <= d2[order[0]] + 6.0]
        top = top[order]
        d3 = np.array([self._verify(img, mask_img, int(ci)) for ci in top])
        # Tie-breakers for near-identical regions (a flat-colored square looks the same at any
        # size): prefer a closer aspect ratio and a zoom factor that pipelines use (1x, 2x).
        boxes = self._cand_box[top].astype(np.float64)
        scale = np.sqrt(w * h / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        scale_pen = np.min(np.abs(np.log(scale[:, None] / _NICE_SCALES[None, :])), axis=1)
        score = (d3 + 20.0 * np.abs(self._cand_log_aspect[top] - np.log(w / h))
                 + 8.0 * np.minimum(scale_pen, 0.3))
        best = int(np.argmin(score))
        if d3[best] > CROP_ACCEPT:
            return None
        ci = int(top[best])
        box = tuple(float(v) for v in self._cand_box[ci])
        return int(self._cand_scene[ci]), box, float(d3[best]), "crop"  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _registry_cached(path: str, key: str) -> SceneRegistry:
    return SceneRegistry(path)


def load_registry(world_dir: str | Path) -> SceneRegistry:
    """Shared registry per world dir (rebuilt if the world was regenerated with other content)."""
    root = Path(world_dir).resolve()
    return _registry_cached(str(root), _index_key(root))
