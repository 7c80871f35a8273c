"""The states of a simulated task (one byte per task in the pilot's arrays)."""

UNSUBMITTED, QUEUED, RUNNING, DONE, LOST, DEP_FAILED, FAILED, UNFINISHED, TIMED_OUT = range(9)
STATE_NAMES = ("unsubmitted", "queued", "running", "done", "lost", "dep_failed", "failed", "unfinished", "timed_out")
