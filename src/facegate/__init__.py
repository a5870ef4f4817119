"""facegate: a face-recognition gate for one workstation and one camera.

The data flow, one processed frame at a time (live/pipeline.py assembles it, for `facegate run`
and `facegate serve` alike):

    frame -> detection -> face (embedding) -> track -> identity by vote -> event
    sources    face, analyzers  face, quality  tracking   gallery, tracking    events, bus

The tree follows it, in layers: `settings` and `events` (top level) <- `vision` (pixels and
models) <- `identity` (who is known) <- `live` (the gate at work) <- `server` and `cli`. A
module imports its own layer or a lower one, never a higher one (tests/test_layers.py).

- **frame**: one picture from a camera, file, stream or folder, with its number and stream
  time (`live.sources.Frame`; `live.sources.Capture` is the thread that reads a `FrameSource`).
- **detection**: where a face is in a frame, with its landmarks (`vision.face.Detection`,
  found by the model pack's analyzer: `vision.analyzers`, `vision.faceplugin`,
  `vision.insightface_pack`).
- **face**: a detection described: aligned crop, head pose, quality and its **embedding**, a
  unit vector whose cosine similarity to another says how alike two faces are
  (`vision.face.Face`; `vision.alignment`, `vision.headpose`, `vision.quality`).
- **track**: one face followed across frames (`live.tracking.Track`, `live.tracking.Tracker`);
  its **identity** is settled by a weighted vote over the gallery's answers to its embeddings.
- **gallery**: the known persons' embeddings with a search index, answering "who is this,
  if anyone" with a `Verdict`: known, ambiguous or unknown (`identity.gallery`,
  `identity.index`).
- **store**: the SQLite database under the data directory, the source of truth for persons,
  embeddings, thumbnails, the audit log and the event history (`identity.store`); the
  gallery's index is always rebuilt from it.
- **person**: someone known: an id, a name (the rule: `identity.names`) and their embeddings
  (`identity.store.Person`).
- **event**: what the gate says, typed, sequenced and streamed (`events`); the `live.engine`
  turns tracks into events, the `live.bus` fans them out to the history (`live.eventlog`),
  the WebSocket hub (`server`) and the CLI's printer (`cli`).

Two ways to become known:
- **enrolment**: from photos, by an admin (`facegate enroll`, `POST /api/persons`): one face
  per photo, checked for quality, identity and duplicates (`identity.enrolment`;
  `identity.archive` imports and exports persons).
- **registration**: live, at the gate: a stranger who stays is offered to the operator, who
  approves; then a guided capture of five poses (front, left, right, up, down), each a few
  `PoseSample`s, checked for consistency and duplicates and stored in one transaction. The
  pure state machine is `live.registration` (the operator's answer: `OperatorDecision`), its
  runtime `live.registrar`, what the person is told `live.pose_guide`, and the one hand-off
  between the engine thread and the registrar `live.focus` (`RegistrationFocus`).

Around them: `settings` (typed configuration), `live.monitor` (frame rates, latencies),
`live.unknowns` (recent strangers, for the operator), `vision.scene` (scene cuts),
`identity.verification` (threshold calibration on photo pairs), `vision.modelpack` (model
files), `server` (HTTP, WebSocket, panel) and `cli` (the `facegate` command).

Liveness (being built): `live.liveness` (the challenge, a pure state machine: a random head
turn and back), `vision.planarity` (whether landmarks moved as a plane: a photo or a screen),
`vision.passive_liveness` (the pack's anti-spoofing model, an uncalibrated score).
Several gates share one store through `identity.store_postgres`; `identity.follower` keeps a
gate's index in step with the others.
"""

__version__ = "0.1.0"
