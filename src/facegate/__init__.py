"""facegate: a face-recognition gate for one workstation and one camera.

The data flow, one processed frame at a time (pipeline.py assembles it, for `facegate run` and
`facegate serve` alike):

    frame -> detection -> face (embedding) -> track -> identity by vote -> event
    sources    face, analyzers  face, quality  tracking   gallery, tracking    events, bus

- **frame**: one picture from a camera, file, stream or folder, with its number and stream
  time (`sources.Frame`; `sources.Capture` is the thread that reads a `FrameSource`).
- **detection**: where a face is in a frame, with its landmarks (`face.Detection`, found by
  the model pack's analyzer: `analyzers`, `faceplugin`, `insightface_pack`).
- **face**: a detection described: aligned crop, head pose, quality and its **embedding**, a
  unit vector whose cosine similarity to another says how alike two faces are (`face.Face`;
  `alignment`, `headpose`, `quality`).
- **track**: one face followed across frames (`tracking.Track`, `tracking.Tracker`); its
  **identity** is settled by a weighted vote over the gallery's answers to its embeddings.
- **gallery**: the known persons' embeddings with a search index, answering "who is this,
  if anyone" with a `Verdict`: known, ambiguous or unknown (`gallery`, `index`).
- **store**: the SQLite database under the data directory, the source of truth for persons,
  embeddings, thumbnails, the audit log and the event history (`store`); the gallery's index
  is always rebuilt from it.
- **person**: someone known: an id, a name (the rule: `names`) and their embeddings
  (`store.Person`).
- **event**: what the gate says, typed, sequenced and streamed (`events`); the `engine` turns
  tracks into events, the `bus` fans them out to the history (`eventlog`), the WebSocket hub
  (`server`) and the CLI's printer (`cli`).

Two ways to become known:
- **enrolment**: from photos, by an admin (`facegate enroll`, `POST /api/persons`): one face
  per photo, checked for quality, identity and duplicates (`enrolment`; `archive` imports and
  exports persons).
- **registration**: live, at the gate: a stranger who stays is offered to the operator, who
  approves; then a guided capture of five poses (front, left, right, up, down), each a few
  `PoseSample`s, checked for consistency and duplicates and stored in one transaction. The
  pure state machine is `registration` (the operator's answer: `OperatorDecision`), its
  runtime `registrar`, what the person is told `pose_guide`, and the one hand-off between the
  engine thread and the registrar `focus` (`RegistrationFocus`).

Around them: `settings` (typed configuration), `monitor` (frame rates, latencies), `unknowns`
(recent strangers, for the operator), `scene` (scene cuts), `verification` (threshold
calibration on photo pairs), `modelpack` (model files), `server` (HTTP, WebSocket, panel) and
`cli` (the `facegate` command).
"""

__version__ = "0.1.0"
