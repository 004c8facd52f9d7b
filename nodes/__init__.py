"""The pack's ComfyUI nodes (host V3 schema). Importing this package imports nothing from the host.

Node ids are a contract with users' saved workflows and scripts: never rename them. They carry the pack's prefix
(`CNCore_`) because the host keeps only one node per id: an unprefixed `ApplyControlNet` from another pack would
silently replace ours (or ours theirs) in a shared workflow. Python class names and display names stay plain.
"""

ID_PREFIX = "CNCore_"
NODE_IDS = tuple(ID_PREFIX + name for name in ("LoadControlNet", "ApplyControlNet", "ControlStrength", "Preprocessor",
                                           "RenderPose", "TrainControlNet"))
