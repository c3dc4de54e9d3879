"""Reading finished runs: compare tables and curves, inference with any run, exports.

`compare` (the runs table, curves, misclassified images, weights and metrics exports), `inference`
(a run's model rebuilt for classifying images).
"""
