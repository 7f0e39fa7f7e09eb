"""Quaternion and rotation helpers (numpy only; importable without the simulator).

Quaternions are xyzw (robosuite's / LIBERO's order). Axis-angle vectors are axis * angle with the
angle in [0, pi].
"""

from __future__ import annotations

import numpy as np


def _as_quaternion(quat, name: str = "quat") -> np.ndarray:
  q = np.asarray(quat, dtype=np.float64)
  if q.shape[-1:] != (4,):
    raise ValueError(f"{name} has shape {q.shape}; expected [..., 4] (x, y, z, w)")
  if not np.all(np.isfinite(q)):
    raise ValueError(f"{name}={q.tolist()} has a non-finite value; expected a finite quaternion")
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  if np.any(norm < 1e-8):
    raise ValueError(f"{name}={q.tolist()} has (near) zero norm; expected a unit quaternion")
  return q / norm


def quat_to_axis_angle(quat) -> np.ndarray:
  """xyzw quaternion(s) [..., 4] -> axis-angle [..., 3] (axis * angle, angle in [0, pi]).

  q and -q are the same rotation; the result takes the representative with w >= 0, so the angle
  never exceeds pi. The identity maps to zeros.
  """
  q = _as_quaternion(quat)
  q = np.where(q[..., 3:4] < 0, -q, q)
  xyz, w = q[..., :3], np.clip(q[..., 3], -1.0, 1.0)
  s = np.linalg.norm(xyz, axis=-1)
  angle = 2.0 * np.arctan2(s, w)
  # angle / sin(angle / 2) -> 2 as s -> 0 (small-angle limit).
  scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)
  return (xyz * scale[..., None]).astype(np.float64)


def axis_angle_to_quat(axis_angle) -> np.ndarray:
  """axis-angle [..., 3] -> xyzw quaternion [..., 4]."""
  v = np.asarray(axis_angle, dtype=np.float64)
  if v.shape[-1:] != (3,):
    raise ValueError(f"axis_angle has shape {v.shape}; expected [..., 3]")
  angle = np.linalg.norm(v, axis=-1, keepdims=True)
  scale = np.where(angle > 1e-12, np.sin(angle / 2) / np.maximum(angle, 1e-12), 0.5)
  return np.concatenate([v * scale, np.cos(angle / 2)], axis=-1)


def quat_to_matrix(quat) -> np.ndarray:
  """xyzw quaternion [4] -> rotation matrix [3, 3]."""
  x, y, z, w = _as_quaternion(quat)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_axis_angle(matrix) -> np.ndarray:
  """Rotation matrix [3, 3] -> axis-angle [3] (via the quaternion, stable near 0 and pi)."""
  m = np.asarray(matrix, dtype=np.float64)
  if m.shape != (3, 3):
    raise ValueError(f"matrix has shape {m.shape}; expected [3, 3]")
  trace = np.trace(m)
  if trace > 0:
    s = 2.0 * np.sqrt(trace + 1.0)
    q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
  else:
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
    q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
    q[i] = 0.25 * s
    q[j] = (m[j, i] + m[i, j]) / s
    q[k] = (m[k, i] + m[i, k]) / s
  return quat_to_axis_angle(np.array(q))


def rotation_z(angle: float) -> np.ndarray:
  """Rotation matrix [3, 3] about the world z axis."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
