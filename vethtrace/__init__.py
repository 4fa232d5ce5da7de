"""vethtrace: where did my packet go across veth pairs, bridges and namespaces."""

__version__ = "0.1.0"
