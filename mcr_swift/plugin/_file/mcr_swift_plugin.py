"""ms-swift plugin file: pass its path to ``--custom_register_path`` (or ``--external_plugins``).

ms-swift 4.6 imports plugins from a .py file path (not a package name); print this file's path with
``mcr-swift plugin``. Importing it registers mcr-swift's datasets and rewards.
"""
import mcr_swift.plugin.registry

mcr_swift.plugin.registry.register()
