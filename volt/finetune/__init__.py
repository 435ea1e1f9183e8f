"""Spark fine-tuning: training files, LoRA fine-tune jobs, the tuned models they make.

``states`` is the job's transition table, ``dataset`` checks training files
(the API at upload, the trainer again before it trains), ``blobs`` keeps files
and adapters encrypted in their metro's object store, ``jobs`` is the
scheduler's single writer of jobs, ``trainer`` the child process an agent runs.
"""
