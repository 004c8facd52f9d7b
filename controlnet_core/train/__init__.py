"""Train a ControlNet with the paper's recipe (Zhang & Agrawala, ICCV 2023 §3; lllyasviel/ControlNet cldm.py)."""
