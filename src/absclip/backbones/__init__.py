"""Backbones: one protocol (:class:`~absclip.backbones.base.Backbone`), one adapter per model family, a loader table."""
