"""Variant config of the ``npu_lib`` family (``npu_lib.<v>``): intel-npu-acceleration-library models."""

from __future__ import annotations

from typing import Literal

from pipeline.core.typed import FromConf, _typed

NpuLibDtype = Literal["int4", "int8", "fp16"]  # intel_npu_acceleration_library: int4, int8, torch.float16
NpuLibLoadDtype = Literal["float32", "float16", "bfloat16"]


@_typed(conf="npu_lib/variant/base.yaml")
class NpuLibVariantConfig(FromConf):
    """One intel-npu-acceleration-library model: ``CompilerConfig(dtype=...)`` and the checkpoint's load dtype.

    Source: the library's README recipe, ``NPUModelForCausalLM.from_pretrained(model_id, use_cache=True,
    config=CompilerConfig(dtype=int4))`` (github.com/intel/intel-npu-acceleration-library, v1.4.0).
    Every default is in ``conf/npu_lib/variant/base.yaml``; :meth:`from_conf` builds one from it.
    """

    dtype: NpuLibDtype
    load_dtype: NpuLibLoadDtype
    # Build the recipe's model one decoder layer at a time (pipeline/npu_lib/worker_layers.py): the same tensors,
    # a fraction of the memory. False runs the library's own whole-model NPUModel.from_pretrained.
    layer_by_layer: bool
