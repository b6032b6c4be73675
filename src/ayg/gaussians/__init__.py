"""3D Gaussians: the cloud and its learning rates (``cloud``), densification and pruning
(``strategy``), and the Inria PLY format (``ply``). Everything is importable from here."""

from ayg.gaussians.cloud import (
    C0,
    PARAM_NAMES,
    GaussianCloud,
    GaussianLR,
    knn_mean_sq_dist,
    make_optimizer,
    quat_to_rotmat,
    rgb_to_sh_dc,
    sh_dc_to_rgb,
    sh_degree_of,
    update_learning_rate,
)
from ayg.gaussians.ply import PlyError, load_ply, ply_field_names, save_ply
from ayg.gaussians.strategy import DensifyStrategy

__all__ = [
    "C0",
    "PARAM_NAMES",
    "DensifyStrategy",
    "GaussianCloud",
    "GaussianLR",
    "PlyError",
    "knn_mean_sq_dist",
    "load_ply",
    "make_optimizer",
    "ply_field_names",
    "quat_to_rotmat",
    "rgb_to_sh_dc",
    "save_ply",
    "sh_dc_to_rgb",
    "sh_degree_of",
    "update_learning_rate",
]
