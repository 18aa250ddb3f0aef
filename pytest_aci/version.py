"""The package version, in a leaf of its own: modules that need it do not import the package facade."""

__version__ = "0.1.0"
