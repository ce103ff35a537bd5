"""Capture: the recorded topics' subscriptions, loss accounting, the recording engine (queue,
writer thread, disk guard, snapshot) and episodes."""
