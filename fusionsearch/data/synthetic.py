"""Built-in synthetic indoor scenes, rendered exactly by ray casting.

A room (floor, four walls, ceiling) with random boxes, spheres and cylinders standing on the
floor, seen by a random camera inside it under a random point light. Every pixel gets its class,
its exact surface normal in camera coordinates (x right, y down, z forward; pointing at the
camera) and its depth (the z of the hit point in camera coordinates); the image is per-class
albedo times a procedural texture times Lambertian shading, plus noise. Segmentation, normals and
depth are therefore related the way real ones are: class edges are geometry edges, normals are
the derivative of depth.

Every object also gets its instance mask (``Scene.instances``) and what was drawn for it
(``Scene.objects``: its shape, footprint, size, tint and how many pixels it would cover unoccluded),
from which ``data.synthetic_boxes`` derives its box and attributes; recording them draws nothing,
so the image and the dense labels are the same with or without them.

Everything is a pure function of (seed, index, size): nothing is stored on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CLASSES", "Scene", "SceneObject", "render_scene"]

CLASSES = ("floor", "wall", "ceiling", "box", "sphere", "cylinder")
_ALBEDO = np.array(
    [
        [0.55, 0.42, 0.30],
        [0.80, 0.78, 0.72],
        [0.92, 0.92, 0.90],
        [0.70, 0.25, 0.20],
        [0.20, 0.45, 0.75],
        [0.30, 0.65, 0.30],
    ]
)
_FAR = 1e9


@dataclass
class SceneObject:
    """What was drawn for one object: ``kind`` its class index in ``CLASSES`` (3 box, 4 sphere,
    5 cylinder), ``centre`` its footprint's centre (x, z) on the floor, ``size`` its half-width
    (radius), ``height`` its height, ``tint`` the factors (3,) its class's albedo was multiplied by,
    and ``full`` the pixels of the image it would cover with nothing in front of it."""

    kind: int
    centre: tuple[float, float]
    size: float
    height: float
    tint: np.ndarray
    full: int = 0


@dataclass
class Scene:
    """One rendered view. Arrays are (H, W[, 3]); ``K`` the intrinsics, ``R`` camera-to-world
    rotation, ``eye`` the camera centre in world coordinates (world y is up, the floor is y = 0).
    ``instances`` (H, W) int64 is the index in ``objects`` of the object seen at each pixel, -1 for
    the room."""

    image: np.ndarray
    seg: np.ndarray
    normal: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    R: np.ndarray
    eye: np.ndarray
    instances: np.ndarray | None = None
    objects: list[SceneObject] = field(default_factory=list)


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: camera x right, y down, z forward; world y up."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    forward = np.array([sy * cp, sp, cy * cp])
    right = np.array([-cy, 0.0, sy])  # world y is up: looking along +z, +x is on the left
    down = np.cross(forward, right)  # right x down = forward
    return np.stack([right, down, forward], axis=1)


def _hit_box_inside(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance and axis-signed face id of rays starting inside the room box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi = (hi - o) / d
        t_lo = (lo - o) / d
    t_exit = np.where(d > 0, t_hi, t_lo)
    t_exit = np.where(d == 0, _FAR, t_exit)
    axis = t_exit.argmin(-1)
    t = np.take_along_axis(t_exit, axis[..., None], -1)[..., 0]
    sign = np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    return t, axis * 2 + (sign > 0)


def _hit_aabb(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - o) / d
        t2 = (hi - o) / d
    tmin = np.where(np.isnan(t1), -_FAR, np.minimum(t1, t2))
    tmax = np.where(np.isnan(t1), _FAR, np.maximum(t1, t2))
    near = tmin.max(-1)
    far = tmax.min(-1)
    axis = tmin.argmax(-1)
    hit = (near <= far) & (near > 1e-6)
    t = np.where(hit, near, _FAR)
    n = np.zeros(d.shape)
    sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    np.put_along_axis(n, axis[..., None], sign[..., None], -1)
    return t, n


def _hit_sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    oc = o - c
    a = (d * d).sum(-1)
    b = 2 * (oc * d).sum(-1)
    disc = b * b - 4 * a * ((oc * oc).sum(-1) - r * r)
    sq = np.sqrt(np.maximum(disc, 0))
    t = (-b - sq) / (2 * a)
    t = np.where((disc > 0) & (t > 1e-6), t, _FAR)
    n = (o + t[..., None] * d - c) / r
    return t, n


def _hit_cylinder(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """A vertical cylinder on the floor centred at (c.x, c.z), radius r, height h, with a top cap."""
    ox, oz = o[..., 0] - c[0], o[..., 2] - c[2]
    dx, dz = d[..., 0], d[..., 2]
    a = dx * dx + dz * dz
    b = 2 * (ox * dx + oz * dz)
    disc = b * b - 4 * a * (ox * ox + oz * oz - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y = o[..., 1] + t_side * d[..., 1]
    side_ok = (disc > 0) & (a > 0) & (t_side > 1e-6) & (y >= 0) & (y <= h)
    t_side = np.where(side_ok, t_side, _FAR)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = (h - o[..., 1]) / d[..., 1]
    px, pz = ox + t_cap * dx, oz + t_cap * dz
    cap_ok = (t_cap > 1e-6) & (px * px + pz * pz <= r * r) & np.isfinite(t_cap)
    t_cap = np.where(cap_ok, t_cap, _FAR)
    t = np.minimum(t_side, t_cap)
    p = o + t[..., None] * d
    n_side = np.stack([p[..., 0] - c[0], np.zeros_like(t), p[..., 2] - c[2]], -1) / r
    n_cap = np.broadcast_to(np.array([0.0, 1.0, 0.0]), n_side.shape)
    n = np.where((t_cap < t_side)[..., None], n_cap, n_side)
    return t, n


@dataclass
class _Hits:
    """The nearest surface seen so far along each ray: its distance, world normal, class, albedo and
    object index (-1: the room). Each object drawn replaces it where the object is nearer."""

    t: np.ndarray
    normal: np.ndarray
    seg: np.ndarray
    albedo: np.ndarray
    inst: np.ndarray

    def keep_nearer(self, ot: np.ndarray, on: np.ndarray, kind: int, tint: np.ndarray, index: int = -1) -> None:
        closer = ot < self.t
        self.t = np.where(closer, ot, self.t)
        self.normal = np.where(closer[..., None], on, self.normal)
        self.seg = np.where(closer, kind, self.seg)
        self.albedo = np.where(closer[..., None], np.clip(tint, 0, 1), self.albedo)
        self.inst = np.where(closer, index, self.inst)


def render_scene(seed: int, height: int = 128, width: int = 128, max_objects: int = 6) -> Scene:
    """Render one scene; the same (seed, size) always gives the same arrays.

    The steps draw from one generator in a fixed order (room, camera, objects, light, noise):
    reordering them would change every scene of every seed."""
    rng = np.random.default_rng(seed)
    half_x, half_z, room_h = rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0), rng.uniform(2.4, 3.2)
    lo, hi = np.array([-half_x, 0.0, -half_z]), np.array([half_x, room_h, half_z])
    eye = np.array([rng.uniform(-0.5, 0.5) * half_x, rng.uniform(1.2, 1.8), rng.uniform(-0.5, 0.5) * half_z])
    R = _rotation(rng.uniform(-math.pi, math.pi), rng.uniform(-0.45, 0.05))
    K, o, d = _camera_rays(rng, eye, R, height, width)
    hits = _room_hits(o, d, lo, hi)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(2, max_objects + 1))):
        obj = _add_object(rng, hits, o, d, eye, R, half_x, half_z, len(objects))
        if obj is not None:
            objects.append(obj)
    image = _shade(rng, hits, o, d, half_x, half_z, room_h)
    normal_c = hits.normal @ R  # world -> camera: R^T n, row-vector form
    return Scene(
        image=np.clip(image, 0, 1).astype(np.float32),
        seg=hits.seg.astype(np.int64),
        normal=normal_c.astype(np.float32),
        depth=hits.t.astype(np.float32),
        K=K,
        R=R,
        eye=eye,
        instances=hits.inst.astype(np.int64),
        objects=objects,
    )


def _camera_rays(
    rng: np.random.Generator, eye: np.ndarray, R: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random field of view: the intrinsics ``K`` and each pixel's ray (origin, world direction),
    scaled so that the ray parameter ``t`` is the depth."""
    fov = math.radians(rng.uniform(55, 70))
    f = 0.5 * width / math.tan(fov / 2)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], -1)  # z = 1: t is depth
    d = rays_cam @ R.T
    o = np.broadcast_to(eye, d.shape)
    return K, o, d


def _room_hits(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _Hits:
    """Where each ray leaves the room: the floor, a wall or the ceiling."""
    t, face = _hit_box_inside(o, d, lo, hi)
    normal_w = np.zeros(d.shape)
    axis = face // 2
    np.put_along_axis(normal_w, axis[..., None], np.where(face % 2 == 1, -1.0, 1.0)[..., None], -1)
    seg = np.where(axis == 1, np.where(face % 2 == 1, 2, 0), 1)  # y faces: floor (0) or ceiling (2)
    return _Hits(t, normal_w, seg, _ALBEDO[seg], np.full(seg.shape, -1))


def _add_object(
    rng: np.random.Generator,
    hits: _Hits,
    o: np.ndarray,
    d: np.ndarray,
    eye: np.ndarray,
    R: np.ndarray,
    half_x: float,
    half_z: float,
    index: int,
) -> SceneObject | None:
    """Draw one box, sphere or cylinder on the floor and keep it where it is the nearest surface,
    as object ``index``; one too close to the camera is dropped (None; its draws are still made, up
    to that test). The draws are made in the same order as ever: recording them changes no scene."""
    kind = int(rng.integers(3, 6))
    # most objects stand in front of the camera, so that views are not just walls
    ahead = R[:, 2][[0, 2]] / max(np.linalg.norm(R[:, 2][[0, 2]]), 1e-6)
    spot = eye[[0, 2]] + ahead * rng.uniform(1.2, 3.5) + rng.normal(0, 0.8, size=2)
    if rng.random() < 0.25:
        spot = rng.uniform([-half_x, -half_z], [half_x, half_z])
    cx = float(np.clip(spot[0], -half_x + 0.6, half_x - 0.6))
    cz = float(np.clip(spot[1], -half_z + 0.6, half_z - 0.6))
    if np.hypot(cx - eye[0], cz - eye[2]) < 0.9:
        return None  # keep objects off the camera
    size = rng.uniform(0.25, 0.6)
    if kind == 3:
        height = rng.uniform(0.3, 1.2)
        ot, on = _hit_aabb(o, d, np.array([cx - size, 0.0, cz - size]), np.array([cx + size, height, cz + size]))
    elif kind == 4:
        height = 2 * size
        ot, on = _hit_sphere(o, d, np.array([cx, size, cz]), size)
    else:
        height = rng.uniform(0.4, 1.4)
        ot, on = _hit_cylinder(o, d, np.array([cx, 0.0, cz]), size, height)
    tint = rng.uniform(0.75, 1.25, size=3)
    hits.keep_nearer(ot, on, kind, _ALBEDO[kind] * tint, index)
    return SceneObject(kind, (cx, cz), float(size), float(height), tint, int((ot < _FAR).sum()))


def _shade(
    rng: np.random.Generator, hits: _Hits, o: np.ndarray, d: np.ndarray, half_x: float, half_z: float, room_h: float
) -> np.ndarray:
    """The unclipped image: albedo times a checker texture times Lambertian shading from a random
    point light under the ceiling, plus noise."""
    p = o + hits.t[..., None] * d
    light = np.array([rng.uniform(-0.6, 0.6) * half_x, room_h - 0.2, rng.uniform(-0.6, 0.6) * half_z])
    to_light = light - p
    to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
    shade = 0.25 + 0.75 * np.clip((hits.normal * to_light).sum(-1), 0, 1)
    texture = 0.85 + 0.15 * np.sign(np.sin(4 * p[..., 0]) * np.sin(4 * p[..., 2]) * np.sin(4 * p[..., 1] + 0.5))
    return hits.albedo * (shade * texture)[..., None] + rng.normal(0, 0.02, size=hits.albedo.shape)
