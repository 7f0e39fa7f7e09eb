"""LIBERO on the real simulator: env wrapper, scripted expert, demonstration recorder.

These modules run in the simulator's own environment (`make sim-libero` -> `.venv-libero`), which
has numpy, LIBERO, robosuite and MuJoCo but neither JAX nor the training package's dependencies.
They import nothing from `roboalign_jax` outside this subpackage (tests/test_import_graph.py holds
them to it). `rotations` needs numpy only, so the main environment can import it too.
"""
