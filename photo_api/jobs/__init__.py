"""Background jobs: the renditions job, the queues it goes through (Redis, or in-process), the worker.

Layered between the API (which enqueues) and the services (the database side of a photo's processing);
the image work itself is photo_api.media. Nothing here imports Flask. Import the modules themselves
(`photo_api.jobs.queue`, ...): this package imports nothing, so the gunicorn master can read the queue's
depth through `queue.py` without loading the database layer before it forks its workers.
"""
