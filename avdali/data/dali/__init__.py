"""The NVIDIA DALI input pipeline: the only package that imports DALI.

The graph is composed the way DALI's examples compose theirs: ``read_samples`` (the webdataset reader), then
the video sub-graphs ``video_frames`` and ``crop_frames`` and the audio ones ``audio_window`` and ``audio_features`` (sub-graphs that follow the clip specification, ``clipspec.py``, computed with
``GRAPH_OPS`` so the numbers are those of the torch loader's kernel), and ``av_pipeline`` ties them together. One
``@pipeline_def`` serves CPU and GPU (``device`` is a parameter): on ``"cuda"`` the video is decoded by the CPU threads
and moved to the GPU at once (the hybrid, ``data.decode = "cpu"``, what ``auto`` picks) or by NVDEC (``mixed``,
``"gpu"``), and every later video and audio-feature op runs on the GPU; on ``"cpu"`` everything runs on the CPU
threads.

Each clip's frames are decoded once per distinct index, in stream order, then put in order (``decode_plan``): DALI's
decoders seek back to the keyframe for a repeated or backward index, and NVDEC in DALI 2.4 decodes from frame 0
again. An index past the stored video (a ``meta.i32`` frame count larger than the webm holds) stops the epoch with a
line naming the shard and the sample (``pad_mode="none"``), never a black frame.

Sample order (``order.py``): evaluation reads the stored order, rank r the range ``rank_range``, built once; training
builds a pipeline per epoch whose file list is that epoch's ``order.reading_order`` (the reader gives rank r the same
``rank_range`` of it), seeded by (seed, rank, epoch), so an epoch depends on nothing before it. With
``pad_last_batch=True`` the reader repeats a rank's last sample until every rank has ``order.batches_per_epoch``
full batches; the iterator marks the first ``hi - lo`` samples of a rank's epoch valid and the repeats invalid
(exact in evaluation, where the reader does not shuffle; in training the count is right but the repeats may sit
anywhere in the shuffled stream). ``index`` comes from each sample's ``source_info`` ("tar:offset:name", padded to a
fixed length in the graph) looked up in the shard indexes.

Modules: ``graph`` (the reader, the sub-graphs and the pipelines), ``runs`` (driving a built pipeline), ``loader``
(``DaliLoader``), ``probes`` (the doctor's). This package is the only place that imports DALI.
"""

from avdali.data.dali.graph import (GRAPH_OPS, OUTPUTS, av_pipeline, cached_clip_pipeline, decode_all_pipeline,
                                    decode_only_pipeline, decode_plan, eval_crop, hann_window)
from avdali.data.dali.loader import DaliLoader
from avdali.data.dali.probes import probe_cpu_pipeline, probe_pipeline, probe_video_decode
from avdali.data.dali.runs import PipelineRuns, cached_runs, decode_all, feed_cached

__all__ = ["GRAPH_OPS", "OUTPUTS", "DaliLoader", "PipelineRuns", "av_pipeline", "cached_clip_pipeline", "cached_runs",
           "decode_all", "decode_all_pipeline", "decode_only_pipeline", "decode_plan", "eval_crop", "feed_cached",
           "hann_window", "probe_cpu_pipeline", "probe_pipeline", "probe_video_decode"]
