"""The adapter layer: the only package of the pack that imports the host (comfy, folder_paths, server).

- adapter.py: `CoreControlNet`, our controls behind the host's ControlBase hook, and conditioning plumbing;
- ui.py: previews in the node, the progress bar with live preview, status text, latent sizes;
- examples.py: the example pictures of workflows/ copied into the host's input folder;
- routes.py: the pack's HTTP routes (/controlnet_core/...), registered when the pack loads;
- models.py: the host's model folders, devices and dtypes, ControlNet and preprocessor weights held by the host's
  model management (ModelPatcher).

The nodes use the names re-exported here; everything else in the pack stays host-free.
"""
from .adapter import CoreControlNet, apply_to_conditioning, is_core
from .examples import install_example_inputs
from .models import (
    PreprocessorModels,
    compute_device,
    controlnet_files,
    controlnet_folders,
    controlnet_path,
    intermediate_device,
    load_controlnet,
    preprocessor_fingerprint,
    preprocessor_folders,
    preprocessor_models_dir,
    preprocessor_resources,
    preprocessor_search_dirs,
    progress_callback,
)
from .ui import Progress, latent_pixel_size, preview

__all__ = ["CoreControlNet", "PreprocessorModels", "apply_to_conditioning", "compute_device", "controlnet_files",
           "controlnet_path", "intermediate_device", "is_core", "load_controlnet", "preprocessor_folders",
           "preprocessor_models_dir", "preprocessor_search_dirs", "progress_callback"]
__all__ += ["controlnet_folders", "preprocessor_fingerprint", "preprocessor_resources", "Progress", "install_example_inputs", "latent_pixel_size", "preview"]
