"""Choice lists shared by the registry (imported without torch) and the implementations."""

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CANNY_BACKENDS = ("auto", "torch", "opencv")
NORMAL_CONVENTIONS = ("bae", "opengl")
