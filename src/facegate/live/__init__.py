"""The gate at work: frames in, events out, and registration at the gate.

Frame sources and capture (`sources`), tracks and their votes (`tracking`), the engine
(`engine`), the registration machine, its guide and runtime (`registration`, `pose_guide`,
`registrar`) with the engine's one hand-off to them (`focus`), the event bus and history
(`bus`, `eventlog`), live figures (`monitor`), recent strangers (`unknowns`), and the
pipeline that assembles it all for `facegate run` and `facegate serve` (`pipeline`).

Imports: `facegate.settings`, `facegate.events`, `facegate.vision`, `facegate.identity` and
each other only; never server or cli (tests/test_layers.py checks it).
"""
