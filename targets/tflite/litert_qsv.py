"""ai-edge-quantizer's calibration result built from the project's ranges, without running the model.

The quantizer's :meth:`Quantizer.calibrate` runs the float file on every calibration image and
keeps, per tensor, a moving average of its min and max: its "QSV" dict, tensor name ->
``{"min": array, "max": array}``. The project reads its own ranges from the same file
(:func:`~dgh_deploy.targets.tflite.ranges.activation_ranges`), so that run would only be
thrown away. Here the dict is made directly, for exactly the tensors the quantizer's calibrator
would have visited (its own walk, ``calibrator._PreserveAllTensorsCalibrator._calibrate_step``,
done here without the interpreter): for each op of the signature's subgraph, and the graph's
input and output pseudo-ops, that the recipe quantizes with min/max, every input and output
tensor that is not a constant. Each entry holds ``lo`` and ``hi`` as float32 arrays of shape
``(1,) * rank`` (one value broadcast over the tensor), the shape its calibrator writes.

A tensor the quantizer needs that the project has no range for (a tensor that is not float,
or one in a subgraph other than the signature's) is an error naming it, not a silent fallback
to the quantizer's own statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError

Ranges = dict[str, tuple[float, float]]  # tensor name -> (lo, hi)
QSVs = dict[str, dict[str, np.ndarray]]  # the quantizer's calibration result


def calibration_result(float_model: bytes, recipe: Any, signature: str, ranges: Ranges) -> QSVs:
    """The quantizer's calibration result for ``float_model`` under ``recipe``, holding ``ranges``."""
    needed = calibrated_tensors(float_model, recipe, signature)
    missing = [name for name in needed if name not in ranges]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DGHError(f"ai-edge-quantizer needs activation ranges for {len(missing)} tensor(s) the calibration "
                       f"did not observe: {shown}",
                       "these are not float tensors the float .tflite computes (integer tensors quantized by the "
                       "recipe?): report the model, or try --converter onnx2tf")
    return {name: {"min": np.full((1,) * rank, ranges[name][0], np.float32),
                   "max": np.full((1,) * rank, ranges[name][1], np.float32)} for name, rank in needed.items()}


def calibrated_tensors(float_model: bytes, recipe: Any, signature: str) -> dict[str, int]:
    """Name -> rank of every tensor the quantizer's calibrator records for ``signature``, in its order."""
    from ai_edge_quantizer import algorithm_manager, default_policy, qtyping, recipe_manager
    from ai_edge_quantizer.algorithms.uniform_quantize import common_quantize, naive_min_max_quantize
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(float_model)
    subgraph = model.subgraphs[_subgraph_index(model, signature)]
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    graph = qtyping.GraphInfo(subgraph.tensors, model.buffers)
    ops = list(subgraph.operators)
    if not any(isinstance(op, qtyping.IOOperator) for op in ops):
        ops += tfl.get_subgraph_input_output_operators(subgraph)
    needed: dict[str, int] = {}
    for op in ops:
        if isinstance(op, qtyping.IOOperator):
            op_key = op.op_key
        else:
            code = model.operatorCodes[op.opcodeIndex].builtinCode
            if code not in tfl.TFL_OP_CODE_TO_NAME:
                continue  # an op the quantizer does not know: its calibrator skips it too
            op_key = tfl.TFL_OP_CODE_TO_NAME[code]
        algorithm, _ = manager.get_quantization_configs(op_key, tfl.get_op_scope(op, subgraph.tensors))
        if algorithm == algorithm_manager.AlgorithmName.NO_QUANTIZE:
            continue
        if default_policy.is_non_quantizable_composite_op(op):
            continue
        calibrate = algorithm_manager.get_quantization_func(algorithm, op_key, qtyping.QuantizeMode.CALIBRATE)
        if calibrate is not naive_min_max_quantize.min_max_calibrate:
            raise DGHError(f"ai-edge-quantizer calibrates {op_key} by {algorithm}, not by min/max: the project's "
                           "ranges cannot stand in for its statistics", "try --converter onnx2tf")
        if tfl.get_op_side_effect_subgraphs(op):
            raise DGHError(f"{op_key} runs a subgraph of its own, whose tensors the project's ranges do not cover",
                           "try --converter onnx2tf")
        for index in common_quantize.get_tensor_indices_requiring_calibration(op, graph):
            tensor = subgraph.tensors[index]
            if tfl.get_tensor_data(tensor, model.buffers) is None:  # constants get no statistics
                needed.setdefault(tfl.get_tensor_name(tensor), len(tensor.shape if tensor.shape is not None else ()))
    return needed


def _subgraph_index(model: Any, signature: str) -> int:
    for sig in model.signatureDefs or []:
        key = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else str(sig.signatureKey)
        if key == signature:
            return int(sig.subgraphIndex)
    raise DGHError(f"the float .tflite has no signature '{signature}'", "convert the model again")
