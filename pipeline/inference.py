"""Public inference API: load an exported VLA and turn (image, instruction) into a 7-D robot action.

    from pipeline.inference import VLAPolicy

    policy = VLAPolicy.from_pretrained("gs://bucket/runs/demo/export", quantization="bf16", device="auto")
    action = policy.predict_action(image, "pick up the red block", unnorm_key="bridge_orig")  # float32[7]
    batch = policy.predict_actions([img_a, img_b], ["open the drawer", "close the drawer"])   # float32[2, 7]

``image``: uint8 [H, W, 3] RGB (numpy or PIL) or float [3, H, W] in [0, 1]; it is resized to the
training resolution. ``quantization``: fp32 | bf16 | int8 | int4 | auto (bf16 on a GPU, fp32 on
CPU); int8/int4 need a CUDA GPU and bitsandbytes (``pip install 'vla-pipeline[gpu]'``). The
implementation lives in :mod:`pipeline.model.inference` and :mod:`pipeline.model.quantize`.
"""

from pipeline.model.inference import (
                                      STATS_FILE,
                                      VLAPolicy,
                                      greedy_action_ids,
                                      load_policy,
                                      load_vla,
                                      unnormalize_action,
)
from pipeline.model.quantize import GPU_MODES, MODES

__all__ = ["GPU_MODES", "MODES", "STATS_FILE", "VLAPolicy", "greedy_action_ids", "load_policy", "load_vla",
           "unnormalize_action"]
