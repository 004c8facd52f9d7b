"""The pack's ComfyUI nodes (host V3 schema). Importing this package imports nothing from the host.

Node ids are a contract with users' saved workflows and scripts: never rename them.
"""

NODE_IDS = ("LoadControlNet", "ApplyControlNet", "ControlStrength", "Preprocessor")
