"""The step files of the tutorials, one package per system."""
