"""Weights rounded with the calibration images: GPTQ (:mod:`.gptq`), used by sim on its own grids, and
a module's weights pre-rounded onto the grid a converter will compute (:mod:`.converter_grid`), so
that the converter's round-to-nearest keeps GPTQ's choices (tflite-int8, ethos-u)."""
