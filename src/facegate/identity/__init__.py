"""Who is known: persons, their embeddings, and how a face is matched to them.

The SQLite store (`store`, with `store_types`, `store_schema`, `store_files`, `store_rows`,
`store_batch`), the vector index (`index`) and the gallery's open-set decisions (`gallery`),
the name rule (`names`), enrolment from photos (`enrolment`), export and import
(`archive`) and pair-verification metrics for calibrating the threshold (`verification`).

Imports: `facegate.settings`, `facegate.events`, `facegate.vision` and each other only; never
live, server or cli (tests/test_layers.py checks it).
"""
