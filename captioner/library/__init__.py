"""Captioning a photo library: the photos to caption (sorted, sharded), results files written as the run goes and
resumable after a kill, captions written into the photos' metadata, and the run's summary."""
