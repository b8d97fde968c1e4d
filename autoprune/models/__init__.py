"""Models: the built-in nets (``zoo``), a small language model (``lm``), the optional torchvision adapter
(``vision``), and the workspace that loads a space's data, dense model and task."""
