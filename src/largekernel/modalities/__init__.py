"""The built-in plug-ins, registered here in one visible place (importing a module registers it).

Each turns one kind of file into the backbone's input and names its task; the contract they
implement is `largekernel.engine.plugin.Plugin`. Another package adds a plug-in through the
`largekernel.plugins` entry-point group instead of editing this list.
"""
from ..engine.data import DataBundle, Skipped, collate
from ..engine.plugin import get_plugin as get_modality
from ..engine.plugin import plugin_for_file as modality_for_file
from ..engine.plugin import register_plugin as register_modality
from . import audio, image, pointcloud, segmentation, timeseries, video  # noqa: F401  (registration)

__all__ = ["DataBundle", "Skipped", "collate", "get_modality", "modality_for_file", "register_modality"]
