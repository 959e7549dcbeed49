"""ms-swift plugin file: pass its path to ``--external_plugins`` (``mcr-swift plugin`` prints it).

ms-swift 4.6 imports plugins from a .py file path (not a package name); print this file's path with
``mcr-swift plugin``. Importing it registers mcr-swift's datasets and rewards.
"""
import mcr_swift.plugin.registry

mcr_swift.plugin.registry.register()
