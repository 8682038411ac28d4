"""The in-process simulator and the training helpers every method shares."""
