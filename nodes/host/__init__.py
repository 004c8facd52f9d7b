"""The adapter layer: the only package of the pack that imports the host (comfy, folder_paths, server).

- adapter.py: `CoreControlNet`, our controls behind the host's ControlBase hook, and conditioning plumbing;
- models.py: the host's model folders, devices and dtypes, ControlNet and preprocessor weights held by the host's
  model management (ModelPatcher).

The nodes use the names re-exported here; everything else in the pack stays host-free.
"""
from .adapter import CoreControlNet, apply_to_conditioning, is_core
from .models import (
    PreprocessorModels,
    compute_device,
    controlnet_files,
    controlnet_path,
    intermediate_device,
    load_controlnet,
    preprocessor_folders,
    preprocessor_models_dir,
    preprocessor_search_dirs,
    progress_callback,
)

__all__ = ["CoreControlNet", "PreprocessorModels", "apply_to_conditioning", "compute_device", "controlnet_files",
           "controlnet_path", "intermediate_device", "is_core", "load_controlnet", "preprocessor_folders",
           "preprocessor_models_dir", "preprocessor_search_dirs", "progress_callback"]
