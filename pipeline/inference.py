"""Public inference API: load an exported VLA and turn (image, instruction) into a 7-D robot action.

    from pipeline.inference import VLAPolicy

    policy = VLAPolicy.from_pretrained("gs://bucket/runs/demo/export", quantization="bf16", device="auto")
    action = policy.predict_action(image, "pick up the red block", unnorm_key="bridge_orig")  # float32[7]
    batch = policy.predict_actions([img_a, img_b], ["open the drawer", "close the drawer"])   # float32[2, 7]

``image``: uint8 [H, W, 3] RGB (numpy or PIL), encoded JPEG/PNG bytes, or float [3, H, W] in
[0, 1]; it gets the training stream's pixels (same Lanczos resize to the trained size, centre crop
for models trained with random crops: ``policy.preprocess``, :class:`ImagePreprocess`).
``quantization``: fp32 | bf16 | int8 | int4 | auto (bf16 on a GPU, fp32 on CPU); int8/int4 need a
CUDA GPU and bitsandbytes (``pip install 'vla-pipeline[gpu]'``). ``decode``: :class:`DecodeOptions`
(default: static KV cache, one CUDA graph per action on a GPU). The implementation lives in
:mod:`pipeline.model.inference`, :mod:`pipeline.model.image_input`, :mod:`pipeline.model.decode`
and :mod:`pipeline.model.quantize`.
"""

from pipeline.model.decode import DecodeOptions
from pipeline.model.image_input import ImagePreprocess
from pipeline.model.inference import (
                                      STATS_FILE,
                                      VLAPolicy,
                                      greedy_action_ids,
                                      load_policy,
                                      load_vla,
                                      unnormalize_action,
)
from pipeline.model.quantize import GPU_MODES, MODES

__all__ = ["GPU_MODES", "MODES", "STATS_FILE", "DecodeOptions", "ImagePreprocess", "VLAPolicy", "greedy_action_ids",
           "load_policy", "load_vla", "unnormalize_action"]
