"""Meta-World on the real simulator: env wrapper, scripted experts, demonstration recorder,
closed-loop harness.

These modules run in the simulator's own environment (`make sim-metaworld` -> `.venv-metaworld`),
which has numpy, Meta-World and MuJoCo but neither JAX nor the training package's dependencies.
They import nothing from `roboalign_jax` outside this subpackage and the shared harness modules
(tests/test_import_graph.py holds them to it). env.py imports Meta-World and MuJoCo lazily, so the
main environment can use its pure functions (gripper snap, camera orientation, action mapping).
"""
