"""The attention plugin as the TensorRT exporter writes it into a graph: one `PluginId` per plugin
form, for `tensorrt_attention.to_plugin_nodes` and `count_plugin_nodes`.

The plugin itself (its name, namespace and version, its numpy semantics `attention_reference` and
`register_plugins()`) lives with the runtime, `edgevl.runtimes.tensorrt_plugin`, because the
process that runs an engine registers it; the exporter reads those names from there (exporters
may import runtimes, never the reverse) and re-exports `attention_reference` for the tests that
check the plugin graph against it.
"""

from __future__ import annotations

from edgevl.exporters.tensorrt_attention import PluginId
from edgevl.runtimes.tensorrt_plugin import (
    MASKED_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, UNMASKED_NAME, attention_reference,
)

__all__ = ["MASKED", "PLUGINS", "UNMASKED", "attention_reference"]

UNMASKED = PluginId(UNMASKED_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION)
MASKED = PluginId(MASKED_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION)
PLUGINS = (UNMASKED, MASKED)
