"""Pixels and models: from a picture to described faces.

Image decoding (`images`), what a face analysis produces and the `FaceAnalyzer` protocol
(`face`), the model packs and their analyzers (`modelpack`, `analyzers`, `faceplugin`,
`insightface_pack`), alignment, head pose and quality (`alignment`, `headpose`, `quality`),
and picture-level scene cuts (`scene`).

Imports: `facegate.settings`, `facegate.events` and each other only; never identity, live,
server or cli (tests/test_layers.py checks it).
"""
