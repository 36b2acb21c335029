"""Training: the loop (:func:`captioner.training.loop.train`, ``fit``), the cross-entropy step beside the
self-critical (SCST) step, run state, exact resume, optimiser and schedule, distributed data parallelism, splits,
fine-tuning, the run report and logs. Never imports ``cli``, ``serving`` or ``export``."""
