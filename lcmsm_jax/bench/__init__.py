"""The measurements behind `lcmsm-benchmark` (`lcmsm_jax/benchmark.py`, the command).

* `measure`: device, peak FLOP/s table, XLA's FLOP count and memory plan, peak memory,
  timing;
* `inputs`: synthetic training batches;
* `training`: the jitted LC-MSM train step, the Segmentor's forward + backward;
* `forward`: the jitted forward, the depthwise-conv formulations;
* `torch_segformer`: transformers' SegFormer, the PyTorch counterpart;
* `input_pipeline`: the grain input pipeline's images/s per worker count.
"""
