"""Recovery: a dead worker's jobs run again within seconds, and a stale worker cannot overwrite a newer attempt.

``liveness`` keeps each worker node's heartbeat (from its main process) and recovers the jobs of its
earlier incarnations when it starts; ``repairs`` is the pass that drives every stuck job one step
(the reaper cron runs it: tasks/crons/reaper.py).
"""
