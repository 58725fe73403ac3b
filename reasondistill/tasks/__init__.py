"""Bundled tasks: datasets the project generates itself."""
