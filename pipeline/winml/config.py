"""Variant config of the ``winml`` family (``winml.<v>``): which IR a Windows ML package wraps, for which device.

Named in the family's registry line (``pipeline.core.registry``); ``pipeline.core.config`` builds the params with
it, so a bad value fails at load time with one line naming its key.
"""

from __future__ import annotations

from typing import Literal

from pipeline.core.typed import ConfigError, FromConf, _typed

WinmlSource = Literal["openvino", "npu"]  # the family whose IR is wrapped: artifacts/<source>/<source_variant>
WinmlDevice = Literal["CPU", "GPU", "NPU"]  # the OpenVINO EP's device_type written into genai_config.json


@_typed(conf="winml/variant/base.yaml")
class WinmlVariantConfig(FromConf):
    """One Windows ML package: the OpenVINO IR it wraps and the device its genai_config.json targets.

    Layout: Olive's ``OpenVINOEncapsulation`` pass (microsoft/Olive, olive/passes/openvino/encapsulation.py,
    genai_config from olive/passes/openvino/ov_utils.py ``create_genai_config``).
    Every default is in ``conf/winml/variant/base.yaml``; :meth:`from_conf` builds one from it.
    """

    source: WinmlSource
    source_variant: str
    device_type: WinmlDevice

    def __post_init__(self) -> None:
        if self.device_type == "NPU" and self.source != "npu":
            raise ConfigError(
                "device_type NPU needs the NPU-ready IR (int4 symmetric, static-shape friendly): set source: npu"
            )
        if self.device_type != "NPU" and self.source == "npu":
            raise ConfigError(
                f"source npu is the NPU-ready IR: use device_type NPU, or source openvino for {self.device_type}"
            )

    @property
    def source_dir(self) -> str:
        """The wrapped IR's folder relative to the project root (``artifacts/openvino/int4``)."""
        return f"artifacts/{self.source}/{self.source_variant}"
