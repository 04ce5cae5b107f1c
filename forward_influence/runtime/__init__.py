"""The host process and device: allocator and threads (:mod:`.host`), per-device defaults (:mod:`.devices`)."""
