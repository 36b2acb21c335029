"""ONNX export (:func:`captioner.export.onnx.export_onnx`) and the ONNX Runtime backend
(:class:`captioner.export.runtime.OnnxCaptioner`, which captions on numpy arrays without PyTorch); onnx and
onnxruntime are imported only here."""
